/**
 * The block expert kernel as a specification: bit-identical to its plain-JS reference for Q4_0
 * and Q8_0, for every variant (native on each x86 instruction set this CPU has, both WebAssembly
 * SIMD ones), on one or two threads, from every arena and for any batch;
 * close to a float64 evaluation of the dequantised weights; and its buffer pool hands out
 * aligned, disjoint page-in buffers.
 */
import { describe, expect, it } from 'vitest';
import { gaussianValues } from '../../../test/support/random.ts';
import { type BlockFormat, blockMatrixBytes, dequantizeBlocks, interleaveQ4_0Rows, quantizeBlocks } from '../../formats/blocks.ts';
import {
  ACTIVATION_RECORD_BYTES,
  BlockExpertKernel,
  BUFFER_ALIGNMENT,
  blockGemmScalar,
  defaultKernelVariant,
  expScalar,
  type KernelVariant,
  quantizeActivations,
  runBlockExpertScalar,
} from './block-kernel.ts';
import {
  allocateExpert,
  EXPERT_FORMATS,
  type ExpertBits,
  type ExpertWeights,
  expertBlocksInRowOrder,
  expertFileBytes,
  expertViews,
  quantizeExpert,
} from './expert-store.ts';
import { loadNativeGemm, type NativeIsa } from './native-gemm.ts';

/** An expert file image quantised from random Gaussian weights. */
function expertImage(dim: number, ffn: number, bits: ExpertBits, seed: number): Uint8Array {
  const std = 1 / Math.sqrt(dim);
  const weights = {
    w1: gaussianValues(seed, ffn * dim, std),
    w3: gaussianValues(seed + 1, ffn * dim, std),
    w2: gaussianValues(seed + 2, dim * ffn, 1 / Math.sqrt(ffn)),
  };
  return quantizeExpert(weights, dim, ffn, bits).bytes;
}

/** The image copied into one of the kernel's buffers, with views as the store makes them. */
function pageIn(kernel: BlockExpertKernel, image: Uint8Array, dim: number, ffn: number, bits: ExpertBits): ExpertWeights {
  const buffer = kernel.allocate();
  buffer.set(image);
  return expertViews(buffer, dim, ffn, bits);
}

const kernelFor = (dim: number, ffn: number, bits: ExpertBits, threads: number, variant?: KernelVariant, expectedBuffers = 4) =>
  BlockExpertKernel.create({ dim, ffn, bufferBytes: expertFileBytes(dim, ffn, bits), expectedBuffers, threads, variant });

function expectSameBits(actual: Float32Array, expected: Float32Array, label: string): void {
  expect(actual.length, label).toBe(expected.length);
  const differing = actual.findIndex((value, i) => !Object.is(value, expected[i]));
  expect(differing, `${label}: first differing output`).toBe(-1);
}

/** The native instruction sets this CPU runs, best first (none where the addon is not built). */
const nativeIsas = (['avx512vnni', 'avx2'] as const).filter((isa) => loadNativeGemm(isa).gemm !== null);
const VARIANTS: KernelVariant[] = ['simd', 'relaxed-simd', ...nativeIsas.map((isa): KernelVariant => `native-${isa}`)];

describe('the variant this engine runs', () => {
  it('is the native kernel on x86: built at install, on the best instruction set the CPU has, checked at load', async () => {
    const { variant, note } = await defaultKernelVariant();
    if (process.arch !== 'x64') return expect(variant).toMatch(/simd$/);
    const best: NativeIsa = loadNativeGemm().gemm?.isa ?? 'avx2';
    expect({ variant, note }).toEqual({ variant: `native-${best}`, note: null });
  });

  it('is relaxed SIMD without the native kernel, on Node 20 and later (exact i16x8 dot products checked at load)', async () => {
    const kernel = await BlockExpertKernel.create({
      dim: 64,
      ffn: 160,
      bufferBytes: 4096,
      expectedBuffers: 1,
      threads: 1,
      variant: 'relaxed-simd',
    });
    expect(kernel.variant).toBe('relaxed-simd');
    await kernel.dispose();
  });
});

describe('a product against blockGemmScalar', () => {
  it.each(['q4_0', 'q8_0'] as const)(
    '%s: the reference follows the definition, Σ blocks (Σ q_w·q_x)·d_w·d_x',
    async (format: BlockFormat) => {
      const [n, cols, m] = [12, 96, 3];
      const rowOrder = new Uint8Array(blockMatrixBytes(format, n, cols));
      quantizeBlocks(format, gaussianValues(1, n * cols), n, cols, rowOrder);
      // The layout the expert files use: Q4_0 rows interleaved by four, Q8_0 in row order.
      const weights = format === 'q4_0' ? interleaveQ4_0Rows(rowOrder, n, cols) : rowOrder;
      const x = gaussianValues(2, m * cols);
      const records = new Uint8Array((m * cols * ACTIVATION_RECORD_BYTES) / 32);
      quantizeActivations(x, 0, m, cols, records);
      const reference = new Float32Array(m * n);
      blockGemmScalar(format, weights, n, cols, m, records, reference);
      // Against the definition: Σ blocks (Σ q_w·q_x) · d_w · d_x with the stored values.
      const dequantised = dequantizeBlocks(format, rowOrder, n, cols);
      const view = new DataView(records.buffer);
      const xq = (i: number, k: number) => view.getInt8(Math.floor((i * cols + k) / 32) * ACTIVATION_RECORD_BYTES + (k % 32));
      const dx = (i: number, k: number) => view.getFloat32(Math.floor((i * cols + k) / 32) * ACTIVATION_RECORD_BYTES + 32, true);
      for (let i = 0; i < m; i++) {
        for (let r = 0; r < n; r++) {
          let exact = 0;
          for (let k = 0; k < cols; k++) exact += dequantised[r * cols + k]! * xq(i, k) * dx(i, k);
          expect(Math.abs(reference[i * n + r]! - exact)).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.abs(exact)));
        }
      }
    },
  );
});

describe('the whole expert is bit-identical to runBlockExpertScalar', () => {
  // 512 / 1024: products large enough that two threads share them; 64 / 160: the golden Mixtral's;
  // 96: w2's rows end in a short band of interleaved Q4_0 rows (two groups of four).
  for (const [dim, ffn] of [
    [64, 160],
    [96, 160],
    [512, 1024],
  ] as const) {
    for (const bits of [4, 8] as const) {
      // The relaxed variant differs from the plain one in Q4_0 only.
      for (const variant of VARIANTS.filter((v) => bits === 4 || v !== 'relaxed-simd')) {
        for (const threads of [1, 2]) {
          it(`dim ${dim} / ffn ${ffn}, ${EXPERT_FORMATS[bits]}, ${variant}, threads ${threads}, 1, 3 and 17 rows`, async () => {
            const kernel = await kernelFor(dim, ffn, bits, threads, variant);
            try {
              const weights = pageIn(kernel, expertImage(dim, ffn, bits, 7), dim, ffn, bits);
              for (const rows of [1, 3, 17]) {
                const x = gaussianValues(100 + rows, rows * dim);
                expectSameBits(kernel.run(x, rows, weights), runBlockExpertScalar(x, rows, weights, dim, ffn), `${rows} rows`);
              }
            } finally {
              await kernel.dispose();
            }
          });
        }
      }
    }
  }
});

describe('two experts at once (runTogether), one per thread', () => {
  // 64 / 160: every product below the split threshold; 512 / 1024: products the threads would share.
  for (const [dim, ffn] of [
    [64, 160],
    [512, 1024],
  ] as const) {
    for (const bits of [4, 8] as const) {
      for (const threads of [1, 2]) {
        it(`dim ${dim} / ffn ${ffn}, ${EXPERT_FORMATS[bits]}, threads ${threads}: the same bits as two lone runs, 1–17 rows`, async () => {
          const kernel = await kernelFor(dim, ffn, bits, threads);
          try {
            const first = pageIn(kernel, expertImage(dim, ffn, bits, 11), dim, ffn, bits);
            const second = pageIn(kernel, expertImage(dim, ffn, bits, 23), dim, ffn, bits);
            for (const [rowsA, rowsB] of [
              [1, 1],
              [3, 1],
              [16, 16],
              [17, 2],
            ] as const) {
              const xA = gaussianValues(200 + rowsA, rowsA * dim);
              const xB = gaussianValues(300 + rowsB, rowsB * dim);
              // Repeated: the helper may take the second expert's job or leave it to this thread.
              for (let round = 0; round < 3; round++) {
                const [a, b] = kernel.runTogether({ x: xA, rows: rowsA, weights: first }, { x: xB, rows: rowsB, weights: second });
                expectSameBits(a, runBlockExpertScalar(xA, rowsA, first, dim, ffn), `first, ${rowsA} rows`);
                expectSameBits(b, runBlockExpertScalar(xB, rowsB, second, dim, ffn), `second, ${rowsB} rows`);
              }
              // A lone run afterwards still sees its own scratch intact.
              expectSameBits(kernel.run(xA, rowsA, first), runBlockExpertScalar(xA, rowsA, first, dim, ffn), 'lone run after');
            }
          } finally {
            await kernel.dispose();
          }
        });
      }
    }
  }

  it.each(nativeIsas)(
    "native-%s: the second expert runs on the addon's helper thread (its chunks counted), one thread leaves it idle, the same bits",
    async (isa) => {
      // Products far below the size that shares their rows: only whole experts reach the helper.
      const [dim, ffn] = [64, 160];
      const gemm = loadNativeGemm(isa).gemm!;
      for (const threads of [1, 2]) {
        const kernel = await kernelFor(dim, ffn, 4, threads, `native-${isa}`);
        try {
          const first = pageIn(kernel, expertImage(dim, ffn, 4, 31), dim, ffn, 4);
          const second = pageIn(kernel, expertImage(dim, ffn, 4, 37), dim, ffn, 4);
          const x = gaussianValues(41, 2 * dim);
          const expected = [runBlockExpertScalar(x, 2, first, dim, ffn), runBlockExpertScalar(x, 1, second, dim, ffn)];
          const before = gemm.helperChunks();
          // A helper that wakes late (busy cores) leaves the job to this thread: run until it has taken some.
          for (let round = 0; round < 3 || (threads === 2 && gemm.helperChunks() === before && round < 200); round++) {
            const [a, b] = kernel.runTogether({ x, rows: 2, weights: first }, { x, rows: 1, weights: second });
            expectSameBits(a, expected[0]!, `threads ${threads}, first`);
            expectSameBits(b, expected[1]!, `threads ${threads}, second`);
          }
          if (threads === 1) expect(gemm.helperChunks()).toBe(before);
          else expect(gemm.helperChunks()).toBeGreaterThan(before);
        } finally {
          await kernel.dispose();
        }
      }
    },
  );

  it.each(VARIANTS)('%s: a layer of experts at once (runMany), three of them across two arenas, the bits of lone runs', async (variant) => {
    const [dim, ffn] = [64, 160];
    // Two buffers per arena: the third expert lands in a second arena.
    const kernel = await kernelFor(dim, ffn, 4, 2, variant, 2);
    try {
      const weights = [7, 8, 9].map((seed) => pageIn(kernel, expertImage(dim, ffn, 4, seed), dim, ffn, 4));
      expect(weights[2]!.w13.buffer).not.toBe(weights[0]!.w13.buffer);
      const inputs = weights.map((w, k) => ({ x: gaussianValues(60 + k, (k + 1) * dim), rows: k + 1, weights: w }));
      const outputs = kernel.runMany(inputs);
      for (const [k, e] of inputs.entries())
        expectSameBits(outputs[k]!, runBlockExpertScalar(e.x, e.rows, e.weights, dim, ffn), `expert ${k}`);
    } finally {
      await kernel.dispose();
    }
  });

  it('runs experts from different arenas one after the other, with the same bits', async () => {
    const [dim, ffn] = [64, 160];
    // One buffer per arena at first: the second expert lands in a second arena.
    const kernel = await kernelFor(dim, ffn, 4, 2, undefined, 1);
    try {
      const first = pageIn(kernel, expertImage(dim, ffn, 4, 5), dim, ffn, 4);
      const second = pageIn(kernel, expertImage(dim, ffn, 4, 6), dim, ffn, 4);
      expect(first.w13.buffer).not.toBe(second.w13.buffer);
      const x = gaussianValues(9, dim);
      const [a, b] = kernel.runTogether({ x, rows: 1, weights: first }, { x, rows: 1, weights: second });
      expectSameBits(a, runBlockExpertScalar(x, 1, first, dim, ffn), 'first');
      expectSameBits(b, runBlockExpertScalar(x, 1, second, dim, ffn), 'second');
    } finally {
      await kernel.dispose();
    }
  });
});

describe('activation quantisation in the kernel', () => {
  it('rounds halves away from zero, keeps all-zero blocks at zero, and matches the reference on both', async () => {
    const [dim, ffn] = [64, 160];
    const kernel = await kernelFor(dim, ffn, 4, 1);
    try {
      const weights = pageIn(kernel, expertImage(dim, ffn, 4, 3), dim, ffn, 4);
      // Block 1: amax 127, so the scale is 1 and ±k.5 lands exactly on a half; block 2: all zeros.
      const x = new Float32Array(dim);
      x.set([127, 2.5, -2.5, 0.5, -0.5, 1.5, -1.5, 126.5, -126.5, 0.49999997, -0.49999997]);
      const records = new Uint8Array((dim / 32) * ACTIVATION_RECORD_BYTES);
      quantizeActivations(x, 0, 1, dim, records);
      expect(Array.from(new Int8Array(records.buffer, 0, 11))).toEqual([127, 3, -3, 1, -1, 2, -2, 127, -127, 0, 0]);
      expect(Array.from(new Int8Array(records.buffer, ACTIVATION_RECORD_BYTES, 32)).every((q) => q === 0)).toBe(true);
      expectSameBits(kernel.run(x, 1, weights), runBlockExpertScalar(x, 1, weights, dim, ffn), 'halves and zeros');
    } finally {
      await kernel.dispose();
    }
  });
});

describe('rows are independent', () => {
  it("a row's output is the same alone or inside a batch, whatever its batchmates' magnitudes", async () => {
    const [dim, ffn] = [512, 1024];
    const kernel = await kernelFor(dim, ffn, 4, 2);
    try {
      const weights = pageIn(kernel, expertImage(dim, ffn, 4, 21), dim, ffn, 4);
      const row = gaussianValues(5, dim);
      const batch = new Float32Array(20 * dim);
      for (let r = 0; r < 20; r++) batch.set(gaussianValues(50 + r, dim, 10 ** ((r % 5) - 2)), r * dim);
      batch.set(row, 17 * dim); // in the second pass of 16 rows
      const alone = kernel.run(row, 1, weights);
      expectSameBits(kernel.run(batch, 20, weights).subarray(17 * dim, 18 * dim), alone, 'row 17 of 20');
    } finally {
      await kernel.dispose();
    }
  });
});

describe('accuracy against float64', () => {
  it.each([4, 8] as const)('int%i: within the activation rounding of the dequantised weights (relative RMS < 1.5%%)', async (bits) => {
    const [dim, ffn] = [256, 512];
    const kernel = await kernelFor(dim, ffn, bits, 1);
    try {
      const weights = pageIn(kernel, expertImage(dim, ffn, bits, 31), dim, ffn, bits);
      const rowOrder = expertBlocksInRowOrder(weights, dim, ffn);
      const w13 = dequantizeBlocks(weights.format, rowOrder.w13, 2 * ffn, dim);
      const w2 = dequantizeBlocks(weights.format, rowOrder.w2, dim, ffn);
      const rows = 4;
      const x = gaussianValues(41, rows * dim);
      const y = kernel.run(x, rows, weights);
      let error = 0;
      let norm = 0;
      for (let r = 0; r < rows; r++) {
        const h = new Float64Array(ffn);
        for (let c = 0; c < ffn; c++) {
          let gate = 0;
          let up = 0;
          for (let k = 0; k < dim; k++) {
            gate += w13[c * dim + k]! * x[r * dim + k]!;
            up += w13[(ffn + c) * dim + k]! * x[r * dim + k]!;
          }
          h[c] = (gate / (1 + Math.exp(-gate))) * up;
        }
        for (let n = 0; n < dim; n++) {
          let exact = 0;
          for (let k = 0; k < ffn; k++) exact += w2[n * ffn + k]! * h[k]!;
          error += (y[r * dim + n]! - exact) ** 2;
          norm += exact ** 2;
        }
      }
      // 8-bit activations per block of 32 (as llama.cpp rounds them): measured 0.5–0.7%.
      expect(Math.sqrt(error / norm)).toBeLessThan(0.015);
    } finally {
      await kernel.dispose();
    }
  });
});

describe('buffers and arenas', () => {
  it('hands out disjoint buffers of whole 4096-byte blocks on 4096-byte boundaries, and a released buffer again', async () => {
    const [dim, ffn] = [64, 160];
    const kernel = await kernelFor(dim, ffn, 4, 1, undefined, 3);
    try {
      const held = [kernel.allocate(), kernel.allocate(), kernel.allocate()];
      for (const buffer of held) {
        expect(buffer.byteLength).toBe(Math.ceil(expertFileBytes(dim, ffn, 4) / BUFFER_ALIGNMENT) * BUFFER_ALIGNMENT);
        expect(buffer.byteOffset % BUFFER_ALIGNMENT).toBe(0);
      }
      const ranges = held.map((b) => [b.byteOffset, b.byteOffset + b.byteLength] as const).sort((a, b) => a[0] - b[0]);
      for (let i = 1; i < ranges.length; i++) expect(ranges[i]![0]).toBeGreaterThanOrEqual(ranges[i - 1]![1]);
      expect(new Set(held.map((b) => b.buffer)).size).toBe(1);
      kernel.release(held[1]!);
      const again = kernel.allocate();
      expect([again.buffer, again.byteOffset]).toEqual([held[1]!.buffer, held[1]!.byteOffset]);
      // The pool is full again: the next buffer comes from a new arena.
      expect(kernel.allocate().buffer).not.toBe(held[0]!.buffer);
    } finally {
      await kernel.dispose();
    }
  });

  it('runs experts from every arena, new arenas reaching the helper thread, and refuses weights outside its buffers', async () => {
    const [dim, ffn] = [512, 1024];
    const kernel = await kernelFor(dim, ffn, 4, 2, undefined, 2);
    try {
      const x = gaussianValues(11, 2 * dim);
      const experts: { weights: ExpertWeights; expected: Float32Array }[] = [];
      for (let e = 0; e < 4; e++) {
        const weights = pageIn(kernel, expertImage(dim, ffn, 4, 500 + e), dim, ffn, 4);
        const expected = runBlockExpertScalar(x, 2, weights, dim, ffn);
        // At once: the product may reach the helper right behind the message carrying a new arena.
        expectSameBits(kernel.run(x, 2, weights), expected, `expert ${e} just after its allocation`);
        experts.push({ weights, expected });
      }
      expect(new Set(experts.map(({ weights }) => weights.w13.buffer)).size).toBe(3);
      for (const e of [3, 0, 2, 1]) expectSameBits(kernel.run(x, 2, experts[e]!.weights), experts[e]!.expected, `expert ${e} again`);

      const outside = allocateExpert(dim, ffn, 4);
      outside.bytes.set(expertImage(dim, ffn, 4, 3));
      expect(() => kernel.run(x, 1, outside.weights)).toThrow(RangeError);
    } finally {
      await expect(kernel.dispose()).resolves.toBeUndefined();
    }
  });
});

describe("the activation's exp (the kernel's and expScalar, bit-identical through the expert tests)", () => {
  it('is within 2 float32 ulps of Math.exp over the range silu meets', () => {
    let worst = 0;
    for (let x = -87; x <= 87; x += 0.0137) {
      const exact = Math.exp(Math.fround(x));
      worst = Math.max(worst, Math.abs(expScalar(x) - exact) / exact);
    }
    expect(worst).toBeLessThan(2 * 2 ** -23);
  });

  it('saturates instead of overflowing: silu of large gates stays finite', () => {
    expect(Number.isFinite(expScalar(1000))).toBe(true);
    expect(expScalar(-1000)).toBeGreaterThan(0);
    expect(expScalar(0)).toBe(1);
  });
});
