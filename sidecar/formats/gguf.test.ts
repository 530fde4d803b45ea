/**
 * The GGUF reader and model source: config and tensors of llama.cpp's files under canonical names
 * (the same numbers as the checkpoint for F32), K-quant dequantisation, and bad files refused
 * with messages naming file, tensor and type.
 */
import { copyFileSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MetadataValue } from '@huggingface/gguf';
import { afterAll, describe, expect, it } from 'vitest';
import { type GgufTensorSpec, readGguf, writeGguf } from '../../test/support/gguf-writer.ts';
import { fromFloat16Bits, toFloat16Bits } from './blocks.ts';
import { Checkpoint, expectedTensors } from './checkpoint.ts';
import { GgufFile } from './gguf.ts';
import { GgufModel } from './gguf-model.ts';
import { dequantizeKQuant } from './k-quants.ts';

const GGUF = new URL('../../test/fixtures/golden/gguf/', import.meta.url).pathname;
const GOLDEN = new URL('../../test/fixtures/golden/', import.meta.url).pathname;
const work = mkdtempSync(join(tmpdir(), 'sirocco-gguf-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** Rewrites a fixture with `change` applied to its metadata and tensor list; returns the new path. */
async function variant(
  name: string,
  from: string,
  change: (m: Record<string, MetadataValue>, t: GgufTensorSpec[]) => GgufTensorSpec[] | undefined,
): Promise<string> {
  const { metadata, tensors } = await readGguf(join(GGUF, from));
  const path = join(work, `${name}.gguf`);
  writeGguf(path, metadata, change(metadata, tensors) ?? tensors);
  return path;
}

async function openError(path: string): Promise<string> {
  try {
    await (await GgufModel.open(path)).close();
  } catch (error) {
    expect((error as Error).name).toBe('SidecarError');
    return (error as Error).message;
  }
  throw new Error(`${path} opened without an error`);
}

describe('GGUF files as model sources', () => {
  it('reads the llama.* config (no sliding window) and every tensor, equal to the checkpoint for F32', async () => {
    const model = await GgufModel.open(join(GGUF, 'tiny-mistral/f32.gguf'));
    const checkpoint = await Checkpoint.open(join(GOLDEN, 'tiny-mistral/native'));
    try {
      expect(model.config).toMatchObject({
        architecture: 'mistral',
        dim: 64,
        nLayers: 2,
        nHeads: 4,
        nKvHeads: 2,
        headDim: 16,
        hiddenDim: 160,
        vocabSize: 512,
        slidingWindow: null,
        bosId: 1,
        eosId: 2,
        numExperts: 0,
        tieEmbeddings: false,
      });
      expect(model.defaultName).toBe('f32');
      // Same weights as the checkpoint, q/k turned into the same rotate-half order.
      for (const { name } of expectedTensors(model.config)) expect(await model.read(name), name).toEqual(await checkpoint.read(name));
    } finally {
      await Promise.all([model.close(), checkpoint.close()]);
    }
  });

  it('slices one Mixtral expert out of the stacked tensors and hands Q4_0 blocks over as they are', async () => {
    const model = await GgufModel.open(join(GGUF, 'tiny-mixtral/q4_0.gguf'));
    const file = await GgufFile.open(join(GGUF, 'tiny-mixtral/q4_0.gguf'));
    try {
      expect(model.config).toMatchObject({ architecture: 'mixtral', numExperts: 8, expertsPerToken: 2, ropeTheta: 1e6 });
      // Expert 5 of layer 1: rows 5·160 … 6·160 of the stacked [64, 160, 8] gate tensor.
      const w1 = await model.read('layers.1.feed_forward.experts.5.w1.weight');
      const stacked = await file.readFloat32('blk.1.ffn_gate_exps.weight');
      expect(w1).toEqual(stacked.subarray(5 * 160 * 64, 6 * 160 * 64));
      const blocks = await model.expertBlocks(1, 5, 'q4_0');
      expect(blocks?.w1.byteLength).toBe(160 * 2 * 18);
      expect(blocks?.w2).toEqual(await file.readBytes('blk.1.ffn_down_exps.weight', 5 * 64 * 5 * 18, 64 * 5 * 18));
      expect(await model.expertBlocks(1, 5, 'q8_0')).toBeUndefined();
    } finally {
      await Promise.all([model.close(), file.close()]);
    }
  });

  it('reads F16 and BF16 tensors', async () => {
    const source = await GgufFile.open(join(GGUF, 'tiny-mistral/f32.gguf'));
    const values = await source.readFloat32('blk.0.attn_v.weight');
    await source.close();
    const f16 = Uint16Array.from(values, (v) => toFloat16Bits(v));
    const bf16 = Uint16Array.from(new Uint32Array(values.buffer), (bits) => bits >>> 16); // truncated: exact in BF16
    for (const [type, halves, expected] of [
      [1, f16, Float32Array.from(f16, (h) => fromFloat16Bits(h))],
      [30, bf16, new Float32Array(Uint32Array.from(bf16, (h) => h << 16).buffer)],
    ] as const) {
      const path = await variant(`type-${type}`, 'tiny-mistral/f32.gguf', (_, tensors) =>
        tensors.map((t) => (t.name === 'blk.0.attn_v.weight' ? { ...t, type, data: new Uint8Array(halves.buffer) } : t)),
      );
      const model = await GgufModel.open(path);
      try {
        expect(await model.read('layers.0.attention.wv.weight')).toEqual(expected);
      } finally {
        await model.close();
      }
    }
  });

  it('ties the output to the embeddings when output.weight is absent', async () => {
    const path = await variant('tied', 'tiny-mistral/f32.gguf', (_, tensors) => tensors.filter((t) => t.name !== 'output.weight'));
    const model = await GgufModel.open(path);
    try {
      expect(model.config.tieEmbeddings).toBe(true);
      expect(await model.read('output.weight')).toEqual(await model.read('tok_embeddings.weight'));
    } finally {
      await model.close();
    }
  });

  it('builds a SentencePiece vocabulary from the tokenizer metadata', async () => {
    const model = await GgufModel.open(join(GGUF, 'tiny-mistral/q8_0.gguf'));
    try {
      const vocabulary = model.vocabulary();
      expect(vocabulary?.addDummyPrefix).toBe(true);
      expect(vocabulary?.pieces.slice(0, 4)).toEqual([
        { piece: '<unk>', score: 0, type: 2 },
        { piece: '<s>', score: 0, type: 3 },
        { piece: '</s>', score: 0, type: 3 },
        { piece: '<0x00>', score: 0, type: 6 },
      ]);
      expect(vocabulary?.pieces).toHaveLength(512);
    } finally {
      await model.close();
    }
  });
});

describe('bad GGUF files are refused, naming file, tensor and type', () => {
  it('wrong magic', async () => {
    const path = join(work, 'not.gguf');
    writeFileSync(path, 'PK\u0003\u0004 definitely not a model');
    expect(await openError(path)).toMatch(/not\.gguf is not a GGUF file \(it does not start with the "GGUF" magic bytes\)/);
  });

  it('truncated data and truncated header', async () => {
    const path = join(work, 'truncated.gguf');
    copyFileSync(join(GGUF, 'tiny-mistral/q8_0.gguf'), path);
    truncateSync(path, 175840 - 4096);
    expect(await openError(path)).toMatch(
      /truncated\.gguf is truncated: tensor "output\.weight" \(Q8_0 \[64, 512\]\) needs bytes up to 175840/,
    );
    for (const size of [2000, 10]) {
      truncateSync(path, size);
      expect(await openError(path)).toMatch(`truncated.gguf is truncated: the file ends (at byte ${size}) inside its header`);
    }
  });

  it('a tensor type this reader cannot decode', async () => {
    const path = await variant('q4_1', 'tiny-mistral/f32.gguf', (_, tensors) =>
      tensors.map((t) => (t.name === 'blk.0.attn_v.weight' ? { ...t, type: 3 } : t)),
    );
    expect(await openError(path)).toMatch(/q4_1\.gguf: tensor "blk\.0\.attn_v\.weight" has type Q4_1, which Sirocco cannot read/);
  });

  it('a shape that does not fit the data, or not the metadata', async () => {
    const overlap = await variant('overlap', 'tiny-mistral/q8_0.gguf', (_, tensors) =>
      tensors.map((t) => (t.name === 'token_embd.weight' ? { ...t, shape: [64, 1024] } : t)),
    );
    expect(await openError(overlap)).toMatch(
      /overlap\.gguf: tensor "token_embd\.weight" \(Q8_0 \[64, 1024\]\) is 69632 bytes, more than the 34816 before the next tensor "blk\.0\.attn_q\.weight"/,
    );
    const wrong = await variant('wrong-shape', 'tiny-mistral/f32.gguf', (_, tensors) =>
      tensors.map((t) => (t.name === 'blk.1.ffn_up.weight' ? { ...t, shape: [160, 64] } : t)),
    );
    expect(await openError(wrong)).toMatch(
      /wrong-shape\.gguf: tensor "blk\.1\.ffn_up\.weight" has shape \[160, 64\] but the metadata implies \[64, 160\]/,
    );
  });

  it('a ragged Q8_0 row', async () => {
    const path = await variant('ragged', 'tiny-mistral/q8_0.gguf', (_, tensors) =>
      tensors.map((t) => (t.name === 'blk.0.attn_q.weight' ? { ...t, shape: [48, 64] } : t)),
    );
    expect(await openError(path)).toMatch(
      /ragged\.gguf: tensor "blk\.0\.attn_q\.weight" is Q8_0 with rows of 48 values, not a multiple of its 32-value blocks/,
    );
  });

  it('an architecture other than llama', async () => {
    const path = await variant('gemma', 'tiny-mistral/f32.gguf', (metadata) => {
      metadata['general.architecture'] = 'gemma';
      return undefined;
    });
    expect(await openError(path)).toMatch(/gemma\.gguf: unknown architecture "gemma" \(general\.architecture\)/);
  });

  it("Mixtral's old per-expert layout", async () => {
    const path = await variant('per-expert', 'tiny-mixtral/q8_0.gguf', (_, tensors) => [
      ...tensors,
      { name: 'blk.0.ffn_gate.0.weight', shape: [64, 160], type: 0, data: new Uint8Array(64 * 160 * 4) },
    ]);
    expect(await openError(path)).toMatch(/per-expert\.gguf: tensor "blk\.0\.ffn_gate\.0\.weight" is in the old per-expert Mixtral layout/);
  });
});

describe('K-quant dequantisation (ggml dequantize_row_q4_K / q5_K / q6_K)', () => {
  // Deterministic bytes; the fp16 scales are set to ordinary values below.
  function randomBytes(count: number, seed: number): Uint8Array {
    const out = new Uint8Array(count);
    let state = seed;
    for (let i = 0; i < count; i++) {
      state = (state * 1103515245 + 12345) >>> 0;
      out[i] = state >>> 24;
    }
    return out;
  }
  const f = Math.fround;
  const half = (b: Uint8Array, at: number) => fromFloat16Bits(b[at]! | (b[at + 1]! << 8));

  /** Element by element, from the bit layout (not the row loop) as the reference. */
  function scaleMin(s: Uint8Array, g: number): [number, number] {
    if (g < 4) return [s[g]! & 63, s[g + 4]! & 63];
    return [(s[g + 4]! & 15) | ((s[g - 4]! >> 6) << 4), (s[g + 4]! >> 4) | ((s[g]! >> 6) << 4)];
  }

  it.each([
    ['q4_k', 144],
    ['q5_k', 176],
  ] as const)('%s', (format, size) => {
    const bytes = randomBytes(2 * size, 7);
    for (const block of [0, 1]) bytes.set([0x00, 0x2c, 0x00, 0x28], block * size); // d = 1/16, dmin = 1/32
    const values = dequantizeKQuant(format, bytes, 512);
    for (let i = 0; i < 512; i++) {
      const at = Math.floor(i / 256) * size;
      const e = i % 256;
      const g = Math.floor(e / 32);
      const qs = at + (format === 'q5_k' ? 48 : 16);
      let q = (bytes[qs + (g >> 1) * 32 + (e % 32)]! >> (4 * (g & 1))) & 15;
      if (format === 'q5_k' && bytes[at + 16 + (e % 32)]! & (1 << g)) q += 16;
      const [sc, m] = scaleMin(bytes.subarray(at + 4, at + 16), g);
      expect(values[i]).toBe(f(f(f(half(bytes, at) * sc) * q) - f(half(bytes, at + 2) * m)));
    }
  });

  it('q6_k', () => {
    const bytes = randomBytes(2 * 210, 11);
    for (const block of [0, 1]) bytes.set([0x00, 0x2c], block * 210 + 208);
    const values = dequantizeKQuant('q6_k', bytes, 512);
    for (let i = 0; i < 512; i++) {
      const at = Math.floor(i / 256) * 210;
      const e = i % 256;
      const n = Math.floor(e / 128);
      const l = e % 32;
      const k = Math.floor((e % 128) / 32);
      const low = (bytes[at + n * 64 + l + (k & 1) * 32]! >> (4 * (k >> 1))) & 15;
      const high = (bytes[at + 128 + n * 32 + l]! >> (2 * k)) & 3;
      const scale = (bytes[at + 192 + n * 8 + Math.floor(l / 16) + 2 * k]! << 24) >> 24;
      expect(values[i]).toBe(f(f(half(bytes, at + 208) * scale) * ((low | (high << 4)) - 32)));
    }
  });
});
