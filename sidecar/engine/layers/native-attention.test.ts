/**
 * The native attention layer (engine/native/attention-layer.cc on the store's layer files) and the
 * native head (native-head.ts) compute what the store's ONNX layer and head graphs compute: on the
 * golden Mixtral, in a ragged batch with a past, during decode and at a long context, their logits
 * stay within quantisation noise of the graphs' and pick the same tokens; a batched sequence gets the same bits
 * as alone, and one thread the same bits as two (also where a layer's products are shared with the
 * addon's helper thread); quantised Mixtral stores carry the layer and head files and a damaged one
 * is refused at load with "convert again"; the addon refuses a call whose arrays do not fit.
 * x86-64 only, where `npm ci` builds the native addon (elsewhere the ONNX graphs run).
 */
import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { argmax, checkpointDir, tempDir } from '../../../test/support/golden.ts';
import { convertCheckpoint, type Manifest } from '../../convert/convert.ts';
import { loadNativeGemm } from '../experts/native-gemm.ts';
import { loadModel, type ModelRuntime, type Sequence } from '../model-runtime.ts';
import { layerStoreDir } from './layer-store.ts';

const native = loadNativeGemm().gemm;
const work = tempDir('native-attention');
afterAll(() => rm(work, { recursive: true, force: true }));

const VOCAB = 512;

/** Logits of a ragged batch (prompts of 9 and 4 tokens), then 6 batched decode steps of fixed tokens (the same inputs for both paths). */
async function raggedRun(runtime: ModelRuntime): Promise<Float32Array[]> {
  const sequences: Sequence[] = [runtime.createSequence(), runtime.createSequence()];
  const prompts = [
    [1, 17, 300, 42, 7, 99, 250, 3, 64],
    [1, 400, 12, 5],
  ];
  const logits = await runtime.forward(sequences.map((sequence, i) => ({ sequence, tokens: prompts[i]! })));
  for (let step = 0; step < 6; step++) {
    logits.push(...(await runtime.forward(sequences.map((sequence, i) => ({ sequence, tokens: [(31 * step + 7 * i + 11) % VOCAB] })))));
  }
  for (const sequence of sequences) runtime.releaseSequence(sequence);
  return logits;
}

/** The golden Mixtral converted at `precision` into `folder`, one byte of its layer file `name` XORed with `mask`. */
async function storeWithFlippedByte(folder: string, precision: 'int4' | 'int8', name: string, fromEnd: number, mask: number) {
  const dir = join(work, folder);
  await convertCheckpoint({ from: checkpointDir('tiny-mixtral', 'native'), to: dir, precision });
  const file = join(dir, layerStoreDir('q8_0'), name);
  const bytes = await readFile(file);
  bytes[bytes.length - fromEnd]! ^= mask;
  await writeFile(file, bytes);
  return { dir, file, bytes };
}

function maxAbsDifference(a: Float32Array, b: Float32Array): number {
  let most = 0;
  for (let i = 0; i < a.length; i++) most = Math.max(most, Math.abs(a[i]! - b[i]!));
  return most;
}

function range(values: Float32Array): number {
  return Math.max(...values) - Math.min(...values);
}

describe.runIf(process.arch === 'x64')('native attention layers and head on the golden Mixtral', () => {
  const stores: Record<'int8' | 'int4' | 'fp32', string> = { int8: '', int4: '', fp32: '' };
  const manifests = {} as Record<keyof typeof stores, Manifest>;

  beforeAll(async () => {
    for (const precision of ['int8', 'int4', 'fp32'] as const) {
      stores[precision] = join(work, precision);
      manifests[precision] = await convertCheckpoint({ from: checkpointDir('tiny-mixtral', 'native'), to: stores[precision], precision });
    }
  });

  it('run here: the native addon is built', () => {
    expect(native?.attentionLayer).toBeTypeOf('function');
  });

  it('quantised stores carry layer and head files, in Q8_0 at int4 too (as the head keeps 8 bits); fp32 stores (the reference) do not', async () => {
    expect(manifests.int4.nativeLayers).toEqual({ format: 'q8_0' });
    expect(manifests.int8.nativeLayers).toEqual({ format: 'q8_0' });
    expect(manifests.fp32.nativeLayers).toBeUndefined();
    const files = await readdir(join(stores.int4, layerStoreDir('q8_0')));
    expect(files.sort()).toEqual(['L0.bin', 'L1.bin', 'embeddings.bin', 'head.bin']);
  });

  it.each(['int8', 'int4'] as const)(
    '%s: a ragged batch with a past decodes as the ONNX layer graphs do, as close to fp32',
    async (precision) => {
      const runtimes = await Promise.all([
        loadModel(stores.fp32),
        loadModel(stores[precision], { attention: 'onnx' }),
        loadModel(stores[precision], { attention: 'native' }),
      ]);
      try {
        const [reference, graphs, actual] = [await raggedRun(runtimes[0]), await raggedRun(runtimes[1]), await raggedRun(runtimes[2])];
        expect(actual).toHaveLength(reference.length);
        let sameTop = 0;
        let graphsError = 0;
        let nativeError = 0;
        for (const [i, row] of actual.entries()) {
          expect(row).toHaveLength(VOCAB);
          // int8: the same rounding bar fp16 scales, so held close to the graphs themselves.
          if (precision === 'int8') expect(maxAbsDifference(row, graphs[i]!)).toBeLessThan(0.02 * range(graphs[i]!));
          if (argmax(row) === argmax(graphs[i]!)) sameTop++;
          graphsError += maxAbsDifference(graphs[i]!, reference[i]!) / range(reference[i]!);
          nativeError += maxAbsDifference(row, reference[i]!) / range(reference[i]!);
        }
        // int4: Q4_0 blocks of 32 against MatMulNBits blocks of 128, two roundings of the same weights, each
        // ~7% off per matrix: judged by their distance to fp32 rather than to each other.
        expect(nativeError).toBeLessThan(1.25 * graphsError);
        expect(sameTop / actual.length).toBeGreaterThanOrEqual(precision === 'int8' ? 1 : 0.75);
        // …and it is not the graphs running after all.
        expect(actual.some((row, i) => maxAbsDifference(row, graphs[i]!) > 0)).toBe(true);
      } finally {
        await Promise.all(runtimes.map((runtime) => runtime.dispose()));
      }
    },
  );

  it('at a long context, where the attention is shared with the helper thread, decodes as the ONNX layer graphs do (int8)', async () => {
    // 3,000 tokens: every prefill chunk and decode step (4 heads × 2 rows × 3,000+ slots) is above
    // the size at which the addon shares the attention; the graphs compute it their own way.
    const runtimes = await Promise.all([loadModel(stores.int8, { attention: 'native' }), loadModel(stores.int8, { attention: 'onnx' })]);
    try {
      const [nativeRows, graphRows] = await Promise.all(
        runtimes.map(async (runtime) => {
          const sequence = runtime.createSequence();
          const prompt = Array.from({ length: 3000 }, (_, i) => (i === 0 ? 1 : (i * 37 + 11) % VOCAB));
          let logits: Float32Array[] = [];
          for (let at = 0; at < prompt.length; at += 500)
            logits = await runtime.forward([{ sequence, tokens: prompt.slice(at, at + 500) }]);
          const rows = [logits[0]!];
          for (let step = 0; step < 3; step++) rows.push(...(await runtime.forward([{ sequence, tokens: [(53 * step + 5) % VOCAB] }])));
          return rows;
        }),
      );
      for (const [i, row] of nativeRows!.entries()) {
        expect(maxAbsDifference(row, graphRows![i]!)).toBeLessThan(0.02 * range(graphRows![i]!));
        expect(argmax(row)).toBe(argmax(graphRows![i]!));
      }
    } finally {
      await Promise.all(runtimes.map((runtime) => runtime.dispose()));
    }
  });

  it('a sequence batched with others gets the bits it gets alone, in odd batches and steps with no padding rows', async () => {
    const runtime = await loadModel(stores.int4, { attention: 'native' });
    try {
      // Five prompt tokens, then three sequences a step: row counts the graphs would pad to even. One
      // of the others is longer, so this sequence's own slots sit after padding in the batch.
      const prompt = [1, 17, 300, 42, 7];
      const alone = runtime.createSequence();
      const aloneLogits = [...(await runtime.forward([{ sequence: alone, tokens: prompt }]))];
      const batched = runtime.createSequence();
      const others = [runtime.createSequence(), runtime.createSequence()];
      const batchedLogits = [
        ...(await runtime.forward([
          { sequence: batched, tokens: prompt },
          { sequence: others[0]!, tokens: [1, 9, 8, 4, 4, 6, 3, 8, 5] },
          { sequence: others[1]!, tokens: [2] },
        ])),
      ];
      for (let step = 0; step < 4; step++) {
        const token = argmax(aloneLogits.at(-1)!);
        aloneLogits.push(...(await runtime.forward([{ sequence: alone, tokens: [token] }])));
        const last = batchedLogits.slice(-3);
        const next = await runtime.forward([
          { sequence: batched, tokens: [token] },
          { sequence: others[0]!, tokens: [argmax(last[1]!)] },
          { sequence: others[1]!, tokens: [argmax(last[2]!)] },
        ]);
        batchedLogits.push(...next);
      }
      const mineOnly = batchedLogits.filter((_, i) => i % 3 === 0);
      for (const [i, row] of aloneLogits.entries()) expect(mineOnly[i]).toEqual(row);
    } finally {
      await runtime.dispose();
    }
  });

  it('one thread gives the bits two give: threads share rows of the head and experts, never sums', async () => {
    const runtimes = await Promise.all([loadModel(stores.int8, { threads: 1 }), loadModel(stores.int8, { threads: 2 })]);
    try {
      const [one, two] = [await raggedRun(runtimes[0]), await raggedRun(runtimes[1])];
      for (const [i, row] of one.entries()) expect(two[i]).toEqual(row);
    } finally {
      await Promise.all(runtimes.map((runtime) => runtime.dispose()));
    }
  });

  /**
   * A synthetic layer for the addon alone: hashed weight bytes with every block's scale(s) 1/256,
   * smooth inputs, and no masked slot. Returns a call on one or two threads.
   */
  function syntheticLayer(shape: {
    dim: number;
    heads: number;
    kvHeads: number;
    headDim: number;
    batch: number;
    seq: number;
    past: number;
    q4: 0 | 1;
  }) {
    const { dim, heads, kvHeads, headDim, batch, seq, past, q4 } = shape;
    const experts = 8;
    const ropeRows = past + seq;
    const qkvRows = (heads + 2 * kvHeads) * headDim;
    const blockBytes = q4 ? 18 : 34;
    const floats = 2 * dim + experts * dim;
    const weights = new Uint8Array(4 * floats + ((qkvRows + dim) * dim * blockBytes) / 32);
    for (let i = 0; i < weights.length; i++) weights[i] = (i * 2654435761) >>> 24;
    new Float32Array(weights.buffer, 0, floats).forEach((_, i, all) => {
      all[i] = i < 2 * dim ? 1 : Math.sin(i) / 32;
    });
    // Groups of four rows lead each block column with their four fp16 scales: Q4_0's 72 bytes, Q8_0's 136.
    const scales = new DataView(weights.buffer, 4 * floats);
    const unit = q4 ? 72 : 136;
    for (let at = 0; at + unit <= scales.byteLength; at += unit) for (let k = 0; k < 4; k++) scales.setUint16(at + 2 * k, 0x1c00, true);
    const values = (n: number, seed: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(seed + i * 0.37));
    const rows = batch * seq;
    const inputs = [
      values(rows * dim, 1),
      values((ropeRows * headDim) / 2, 2),
      values((ropeRows * headDim) / 2, 3),
      Int32Array.from({ length: rows }, (_, i) => past + (i % seq)),
      new Float32Array(rows * (past + seq)),
      values(batch * kvHeads * past * headDim, 4),
      values(batch * kvHeads * past * headDim, 5),
    ] as const;
    return (threads: number) => {
      const outputs = [rows * dim, rows * dim, rows * experts, batch * kvHeads * seq * headDim, batch * kvHeads * seq * headDim].map(
        (n) => new Float32Array(n),
      ) as [Float32Array, Float32Array, Float32Array, Float32Array, Float32Array];
      const isa = native!.isaCode;
      const dims = Int32Array.of(isa, q4, dim, heads, kvHeads, headDim, experts, batch, seq, past, ropeRows, threads);
      native!.attentionLayer(weights, dims, 1e-5, ...inputs, ...outputs);
      return outputs;
    };
  }

  /** One thread's outputs, then two threads' until the helper has run `chunks` chunks, each compared with them. */
  function expectHelperGivesTheSameBits(run: (threads: number) => Float32Array[], chunks: number): void {
    const chunksBefore = native!.helperChunks();
    const alone = run(1);
    expect(alone[0]!.every(Number.isFinite) && alone[2]!.some((value) => value !== 0)).toBe(true);
    expect(native!.helperChunks()).toBe(chunksBefore);
    // The helper sleeps between jobs and takes only the chunks left when it wakes (none, if it
    // wakes late), so calls repeat until it has run some, each checked.
    for (let call = 0; call < 200 && native!.helperChunks() < chunksBefore + chunks; call++) expect(run(2)).toEqual(alone);
    expect(native!.helperChunks()).toBeGreaterThanOrEqual(chunksBefore + chunks);
  }

  it.each([
    ['q8_0', 0],
    ['q4_0', 1],
  ] as const)('%s: a layer large enough to share its products with the helper thread gives the bits of one thread', (_, q4) => {
    // dim 1024: Q|K|V and wo are 0.6–1.7 MB, above the size the addon splits at; the golden layers are far below it.
    expectHelperGivesTheSameBits(syntheticLayer({ dim: 1024, heads: 8, kvHeads: 2, headDim: 128, batch: 2, seq: 2, past: 3, q4 }), 20);
  });

  it.each([
    ['four query heads per KV head', 2],
    ['one per KV head', 8],
    ['eight per KV head', 1],
  ])(
    'a long context shares its attention with the helper thread, one (row, KV head) per chunk, with the bits of one thread: %s',
    (_, kvHeads) => {
      // Products far below the split size, 8 heads × 3,001 slots above the attention's: the helper's
      // chunks can only be attention.
      expectHelperGivesTheSameBits(syntheticLayer({ dim: 256, heads: 8, kvHeads, headDim: 32, batch: 2, seq: 1, past: 3000, q4: 0 }), 4);
    },
  );

  it('a damaged layer file is refused at load with "convert again", naming the file', async () => {
    const { dir: damaged, file, bytes } = await storeWithFlippedByte('damaged', 'int4', 'L1.bin', 5, 0xff);
    await expect(loadModel(damaged)).rejects.toThrow(/L1\.bin: checksum mismatch \(damaged\); convert the checkpoint again/);
    await writeFile(file, bytes.subarray(0, bytes.length - 64));
    await expect(loadModel(damaged)).rejects.toThrow(/L1\.bin: truncated or of the wrong size .*; convert the checkpoint again/);
    await rm(file);
    await expect(loadModel(damaged)).rejects.toThrow(/cannot read native layer file .*L1\.bin.*; convert the checkpoint again/);
    // The ONNX layer graphs do not need the file.
    const onnx = await loadModel(damaged, { attention: 'onnx' });
    await onnx.dispose();
  });

  it('a damaged head file is refused at load with "convert again", naming the file', async () => {
    const { dir: damaged } = await storeWithFlippedByte('damaged-head', 'int8', 'head.bin', 3, 0x40);
    await expect(loadModel(damaged)).rejects.toThrow(/head\.bin: checksum mismatch \(damaged\); convert the checkpoint again/);
    const onnx = await loadModel(damaged, { attention: 'onnx' });
    await onnx.dispose();
  });

  it('the addon refuses arrays that do not fit the shape it is given, with a message naming them', () => {
    const call = native!.attentionLayer;
    const dims = Int32Array.of(native!.isaCode, 1, 64, 4, 2, 16, 8, 1, 2, 0, 4, 1);
    const f = (n: number) => new Float32Array(n);
    const weightBytes = 4 * (2 * 64 + 8 * 64) + 128 * 2 * 18 + 64 * 2 * 18;
    const args = (weights: Uint8Array, hidden: Float32Array) =>
      [
        weights,
        dims,
        1e-5,
        hidden,
        f(4 * 8),
        f(4 * 8),
        Int32Array.of(0, 1),
        f(2 * 2),
        f(0),
        f(0),
        f(128),
        f(128),
        f(16),
        f(64),
        f(64),
      ] as const;
    expect(() => call(...args(new Uint8Array(weightBytes), f(128)))).not.toThrow();
    expect(() => call(...args(new Uint8Array(weightBytes - 1), f(128)))).toThrow(/weights have the wrong size/);
    expect(() => call(...args(new Uint8Array(weightBytes), f(127)))).toThrow(/hidden must be a Float32Array of 128/);
    const outOfTable = [...args(new Uint8Array(weightBytes), f(128))] as unknown as Parameters<typeof call>;
    outOfTable[6] = Int32Array.of(0, 4);
    expect(() => call(...outOfTable)).toThrow(/a position is outside the RoPE table/);
    const threeThreads = [...args(new Uint8Array(weightBytes), f(128))] as unknown as Parameters<typeof call>;
    threeThreads[1] = Int32Array.of(...dims.subarray(0, 11), 3);
    expect(() => call(...threeThreads)).toThrow(/bad shape/);
  });
});
