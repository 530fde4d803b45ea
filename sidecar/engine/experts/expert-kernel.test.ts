/**
 * The int4 expert kernel (sidecar/expert-kernel.ts) as a specification: the plain-JS reference
 * matches the definition of the packing, the WebAssembly SIMD kernel is bit-identical to it for
 * SIMD and fallback shapes, on one or two threads and from every arena, rows never influence each
 * other, the whole expert stays close to a float64 evaluation of the dequantised weights, and the
 * kernel's buffer pool and helper thread behave.
 */
import { Worker as NodeWorker } from 'node:worker_threads';
import { afterAll, describe, expect, it, vi } from 'vitest';
import {
  ACTIVATION_MAX,
  highNibble16,
  Int4ExpertKernel,
  type Int4Matrix,
  int4GemvScalar,
  lowNibble16,
  runInt4ExpertScalar,
} from './expert-kernel.ts';
import { allocateExpert, expertFileBytes, expertPayloadBytes, type Int4ExpertWeights } from './expert-store.ts';

/** Every helper Worker the kernel starts (a subclass of the real one), to observe its exit. */
const workers = vi.hoisted(() => [] as import('node:worker_threads').Worker[]);
vi.mock('node:worker_threads', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:worker_threads')>();
  class RecordedWorker extends actual.Worker {
    constructor(...args: ConstructorParameters<typeof actual.Worker>) {
      super(...args);
      workers.push(this);
    }
  }
  return { ...actual, default: { ...actual, Worker: RecordedWorker }, Worker: RecordedWorker };
});

/**
 * expert-kernel.ts shares a product with the helper thread from this many packed bytes and rows
 * (K) on: SPLIT_MIN_BYTES and 2·CHUNK_ROWS, not exported.
 */
const SPLIT_MIN_BYTES = 1 << 20;
const SPLIT_MIN_ROWS = 2 * 256;
/** Whether a [rows, rowBytes] product is shared between the threads. */
const shared = (rows: number, rowBytes: number): boolean =>
  rows * rowBytes >= SPLIT_MIN_BYTES && rows >= SPLIT_MIN_ROWS && rowBytes % 16 === 0;

// ── deterministic data ─────────────────────────────────────────────────────────────────────────

/** mulberry32: a seeded uniform generator in [0, 1). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function gaussian(random: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
}

function randomActivations(seed: number, count: number, spread = 1): Float32Array {
  const random = rng(seed);
  return Float32Array.from({ length: count }, () => spread * gaussian(random));
}

/**
 * An `allocateExpert(dim, ffn, 4)` file image with seeded weights. `anyByte`: every byte value,
 * nibble -8 included (what a corrupt or foreign file could hold); otherwise q ∈ [-7, 7] as the
 * converter writes. Scales make w·x of unit-variance x about unit variance, varied per column.
 */
function expertImage(dim: number, ffn: number, seed: number, anyByte: boolean): Uint8Array {
  const random = rng(seed);
  const { bytes, weights } = allocateExpert(dim, ffn, 4);
  const nibble = () => (Math.floor(random() * 15) - 7) & 0x0f;
  for (const packed of [weights.p13, weights.p2]) {
    for (let i = 0; i < packed.length; i++) packed[i] = anyByte ? Math.floor(random() * 256) : nibble() | (nibble() << 4);
  }
  // Σ (16·q·s)² over K terms with Var(q) ≈ 18.7 → s ≈ 1 / (16·√(18.7·K)).
  const scale = (inner: number) => ((0.5 + random()) / (16 * Math.sqrt(18.7 * inner))) * (random() < 0.1 ? -1 : 1);
  for (let c = 0; c < 2 * ffn; c++) weights.s13[c] = scale(dim);
  for (let n = 0; n < dim; n++) weights.s2[n] = scale(ffn);
  return bytes;
}

/**
 * The views `ExpertStore.read` hands out over a whole file image (expert-store.ts `viewsOf`,
 * int4): 64-byte header, s13 f32[2·ffn], s2 f32[dim], p13 u8[dim·ffn], p2 u8[ffn·dim/2].
 */
function int4Views(bytes: Uint8Array, dim: number, ffn: number): Int4ExpertWeights {
  const header = expertFileBytes(dim, ffn, 4) - expertPayloadBytes(dim, ffn, 4);
  let offset = bytes.byteOffset + header;
  const s13 = new Float32Array(bytes.buffer, offset, 2 * ffn);
  offset += 4 * 2 * ffn;
  const s2 = new Float32Array(bytes.buffer, offset, dim);
  offset += 4 * dim;
  const p13 = new Uint8Array(bytes.buffer, offset, dim * ffn);
  offset += dim * ffn;
  const p2 = new Uint8Array(bytes.buffer, offset, (ffn * dim) / 2);
  return { bits: 4, s13, s2, p13, p2 };
}

/** Copies an expert image into one of the kernel's buffers; returns the weights as the cache would. */
function pageIn(kernel: Int4ExpertKernel, image: Uint8Array, dim: number, ffn: number): Int4ExpertWeights {
  const buffer = kernel.allocate();
  expect(buffer.byteLength).toBe(image.byteLength);
  buffer.set(image);
  return int4Views(buffer, dim, ffn);
}

/** Index of the first element whose bits differ (or the shorter length); -1 when bit-identical. */
function firstBitDifference(a: Float32Array, b: Float32Array): number {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  const n = Math.min(ua.length, ub.length);
  for (let i = 0; i < n; i++) if (ua[i] !== ub[i]) return i;
  return a.length === b.length ? -1 : n;
}

function expectBitIdentical(actual: Float32Array, expected: Float32Array, what: string): void {
  const at = firstBitDifference(actual, expected);
  expect(at, `${what}: first difference at ${at} (${actual[at]} vs ${expected[at]})`).toBe(-1);
}

const kernels: Int4ExpertKernel[] = [];
function makeKernel(dim: number, ffn: number, threads: number, expectedBuffers = 2): Int4ExpertKernel {
  const kernel = new Int4ExpertKernel({ dim, ffn, bufferBytes: expertFileBytes(dim, ffn, 4), expectedBuffers, threads });
  kernels.push(kernel);
  return kernel;
}

afterAll(async () => {
  await Promise.all(kernels.map((kernel) => kernel.dispose()));
});

// ── the reference ──────────────────────────────────────────────────────────────────────────────

/** The packing's definition: a nibble is a 4-bit two's-complement q; the kernel's weight is 16·q. */
const signedNibble = (bits: number): number => (bits >= 8 ? bits - 16 : bits);
const low16 = (byte: number): number => 16 * signedNibble(byte & 0x0f);
const high16 = (byte: number): number => 16 * signedNibble(byte >> 4);

describe('int4 nibble decoding', () => {
  it('reads hand-made bytes as 16·q: low nibble = column c, high nibble = column c + rowBytes', () => {
    const cases: [byte: number, low: number, high: number][] = [
      [0x00, 0, 0],
      [0x7f, -16, 112], // lo 0xF = -1, hi 0x7 = +7
      [0x88, -128, -128], // both -8 (never written by the converter, still decoded)
      [0xf1, 16, -16], // lo +1, hi 0xF = -1
      [0x17, 112, 16],
      [0x99, -112, -112],
    ];
    for (const [byte, low, high] of cases) {
      expect([lowNibble16(byte), highNibble16(byte)], `byte 0x${byte.toString(16)}`).toEqual([low, high]);
    }
  });

  it("agrees with the two's-complement definition on all 256 byte values", () => {
    for (let byte = 0; byte < 256; byte++) {
      expect(lowNibble16(byte), `low of 0x${byte.toString(16)}`).toBe(low16(byte));
      expect(highNibble16(byte), `high of 0x${byte.toString(16)}`).toBe(high16(byte));
    }
  });
});

describe('int4GemvScalar', () => {
  it.each([
    [7, 5],
    [32, 16],
    [50, 33],
  ])('computes out[c] = Σₖ lo(k,c)·xq[k] and out[rowBytes+c] = Σₖ hi(k,c)·xq[k] (K %i, rowBytes %i, random bytes)', (rows, rowBytes) => {
    const random = rng(rows * 1000 + rowBytes);
    const packed = Uint8Array.from({ length: rows * rowBytes }, () => Math.floor(random() * 256));
    // Activations over the whole int16 range the kernel feeds (±511), with zeros sprinkled in.
    const xq = Int16Array.from({ length: rows }, () => (random() < 0.2 ? 0 : Math.round((2 * random() - 1) * ACTIVATION_MAX)));
    xq[0] = ACTIVATION_MAX;
    xq[rows - 1] = -ACTIVATION_MAX;
    const out = new Int32Array(2 * rowBytes + 3).fill(0x5a5a5a5a); // stale scratch must not leak in
    int4GemvScalar({ packed, rows, rowBytes } satisfies Int4Matrix, xq, out);
    const expected = new Array<number>(2 * rowBytes).fill(0);
    for (let k = 0; k < rows; k++) {
      for (let c = 0; c < rowBytes; c++) {
        const byte = packed[k * rowBytes + c]!;
        expected[c]! += low16(byte) * xq[k]!;
        expected[rowBytes + c]! += high16(byte) * xq[k]!;
      }
    }
    expect(Array.from(out.subarray(0, 2 * rowBytes))).toEqual(expected);
  });
});

// ── the kernel against the reference ───────────────────────────────────────────────────────────

/**
 * Shapes: SIMD (rowBytes = ffn and dim/2 multiples of 16, even K) for both products; fallback
 * (plain JS) for both; and mixed ones where one product takes each path. dim 1024/ffn 3584 has
 * p13 3.5 MiB (K 1024) and p2 1.75 MiB (K 3584): with threads 2 both are shared with the helper.
 */
const SHAPES: { dim: number; ffn: number; kind: string }[] = [
  { dim: 32, ffn: 16, kind: 'SIMD, one strip' },
  { dim: 64, ffn: 160, kind: 'SIMD' },
  { dim: 256, ffn: 512, kind: 'SIMD' },
  { dim: 1024, ffn: 3584, kind: 'SIMD, split across threads' },
  { dim: 48, ffn: 40, kind: 'fallback' },
  { dim: 50, ffn: 33, kind: 'fallback, odd ffn and dim/2' },
  { dim: 64, ffn: 33, kind: 'fallback: w2 rowBytes fits SIMD but K is odd' },
  { dim: 48, ffn: 160, kind: 'mixed: w13 SIMD, w2 fallback' },
  { dim: 40, ffn: 64, kind: 'mixed: w13 SIMD, w2 fallback' },
];

describe('Int4ExpertKernel.run is bit-identical to runInt4ExpertScalar', () => {
  it('the test shapes cover the thread split', () => {
    expect(shared(1024, 3584)).toBe(true); // w13: K = dim, rowBytes = ffn
    expect(shared(3584, 1024 / 2)).toBe(true); // w2: K = ffn, rowBytes = dim / 2
  });

  it("lays weights out in its buffers as ExpertStore does (views match allocateExpert's)", () => {
    const [dim, ffn] = [64, 160];
    const image = expertImage(dim, ffn, 1, true);
    const reference = allocateExpert(dim, ffn, 4);
    reference.bytes.set(image);
    const weights = pageIn(makeKernel(dim, ffn, 1), image, dim, ffn);
    for (const key of ['s13', 's2', 'p13', 'p2'] as const) {
      expect(weights[key].length, key).toBe(reference.weights[key].length);
      expect(Array.from(weights[key]), key).toEqual(Array.from(reference.weights[key]));
    }
  });

  for (const { dim, ffn, kind } of SHAPES) {
    for (const threads of [1, 2]) {
      it(`dim ${dim} / ffn ${ffn} (${kind}), threads ${threads}, rows 1 and 3`, () => {
        const kernel = makeKernel(dim, ffn, threads);
        const weights = pageIn(kernel, expertImage(dim, ffn, dim * 7 + ffn, true), dim, ffn);
        for (const rows of [1, 3]) {
          const x = randomActivations(rows * 31 + dim, rows * dim);
          const y = kernel.run(x, rows, weights);
          expect(y.length).toBe(rows * dim);
          expect(y.every(Number.isFinite)).toBe(true);
          expect(y.some((value) => value !== 0)).toBe(true);
          expectBitIdentical(y, runInt4ExpertScalar(x, rows, weights, dim, ffn), `rows ${rows}`);
        }
      });
    }
  }
});

describe('threads and arenas', () => {
  it('threads 1 and threads 2 give identical outputs (SIMD split and fallback shapes)', () => {
    for (const [dim, ffn] of [
      [1024, 3584],
      [48, 40],
    ] as const) {
      const image = expertImage(dim, ffn, 99, false);
      const one = makeKernel(dim, ffn, 1);
      const two = makeKernel(dim, ffn, 2);
      const w1 = pageIn(one, image, dim, ffn);
      const w2 = pageIn(two, image, dim, ffn);
      const x = randomActivations(5, 2 * dim);
      expectBitIdentical(two.run(x, 2, w2), one.run(x, 2, w1), `dim ${dim}`);
    }
  });

  it('threads 2 starts one helper thread; threads 1 starts none', () => {
    const before = workers.length;
    makeKernel(64, 160, 1);
    expect(workers.length).toBe(before);
    makeKernel(64, 160, 2);
    expect(workers.length).toBe(before + 1);
  });

  it('runs experts from every arena when its buffers outgrow expectedBuffers (new arenas reach the helper)', () => {
    // dim 1024 / ffn 2048: p13 2 MiB (K 1024) and p2 1 MiB (K 2048): both products are shared with the helper.
    const [dim, ffn] = [1024, 2048];
    expect(shared(dim, ffn)).toBe(true);
    expect(shared(ffn, dim / 2)).toBe(true);
    const kernel = makeKernel(dim, ffn, 2, 2);
    const x = randomActivations(11, 2 * dim);
    const experts: { weights: Int4ExpertWeights; expected: Float32Array }[] = [];
    for (let e = 0; e < 4; e++) {
      const weights = pageIn(kernel, expertImage(dim, ffn, 500 + e, true), dim, ffn);
      const expected = runInt4ExpertScalar(x, 2, weights, dim, ffn);
      // Run at once: the job may reach the helper right behind the message carrying a new arena.
      expectBitIdentical(kernel.run(x, 2, weights), expected, `expert ${e} just after its allocation`);
      experts.push({ weights, expected });
    }
    // Buffers 0 and 1 share the first arena (expectedBuffers 2); 2 and 3 each needed a new one.
    const memories = new Set(experts.map(({ weights }) => weights.p13.buffer));
    expect(memories.size).toBe(3);
    expect(experts[0]!.weights.p13.buffer).toBe(experts[1]!.weights.p13.buffer);
    // And again in another order, now that every arena is known to the helper.
    for (const e of [3, 0, 2, 1]) {
      expectBitIdentical(kernel.run(x, 2, experts[e]!.weights), experts[e]!.expected, `expert ${e} on the second pass`);
    }
  });
});

describe('rows are independent', () => {
  it("a row's output is the same alone or inside a batch, whatever its batchmates' magnitudes", () => {
    for (const [dim, ffn, threads] of [
      [256, 512, 2],
      [1024, 3584, 2],
      [48, 40, 1],
    ] as const) {
      const kernel = makeKernel(dim, ffn, threads);
      const weights = pageIn(kernel, expertImage(dim, ffn, 7, false), dim, ffn);
      // Rows: ordinary, 1000× larger, all zeros, 1e-3× smaller.
      const rows = [randomActivations(1, dim), randomActivations(2, dim, 1000), new Float32Array(dim), randomActivations(3, dim, 1e-3)];
      const batch = new Float32Array(rows.length * dim);
      for (const [r, row] of rows.entries()) batch.set(row, r * dim);
      const together = kernel.run(batch, rows.length, weights);
      rows.forEach((row, r) => {
        expectBitIdentical(together.subarray(r * dim, (r + 1) * dim), kernel.run(row, 1, weights), `dim ${dim} row ${r}`);
      });
      expect(Array.from(together.subarray(2 * dim, 3 * dim)).every((value) => value === 0)).toBe(true);
    }
  });
});

// ── accuracy ───────────────────────────────────────────────────────────────────────────────────

/** y = w2(silu(w1·x) ⊙ w3·x) in float64 with the dequantised weights 16·q × scale and unquantised x. */
function float64Expert(x: Float32Array, rows: number, w: Int4ExpertWeights, dim: number, ffn: number): Float64Array {
  const half = dim / 2;
  const y = new Float64Array(rows * dim);
  const gate = new Float64Array(ffn);
  const up = new Float64Array(ffn);
  const hidden = new Float64Array(ffn);
  for (let r = 0; r < rows; r++) {
    gate.fill(0);
    up.fill(0);
    for (let k = 0; k < dim; k++) {
      const xk = x[r * dim + k]!;
      for (let c = 0; c < ffn; c++) {
        const byte = w.p13[k * ffn + c]!;
        gate[c]! += low16(byte) * w.s13[c]! * xk;
        up[c]! += high16(byte) * w.s13[ffn + c]! * xk;
      }
    }
    for (let c = 0; c < ffn; c++) hidden[c] = (gate[c]! / (1 + Math.exp(-gate[c]!))) * up[c]!;
    for (let c = 0; c < ffn; c++) {
      for (let n = 0; n < half; n++) {
        const byte = w.p2[c * half + n]!;
        y[r * dim + n]! += low16(byte) * w.s2[n]! * hidden[c]!;
        y[r * dim + half + n]! += high16(byte) * w.s2[half + n]! * hidden[c]!;
      }
    }
  }
  return y;
}

/**
 * Measured worst row of 3 (the seeds below): 7.5e-3 relative L2 error for dim 256 / ffn 512 and
 * 7.4e-3 for dim 1024 / ffn 3584. Why that size: rounding a vector to ±511 steps of max/511 leaves
 * a uniform error of RMS max/(511·√12) ≈ (max/rms)/1770 relative. x is Gaussian (max/rms ≈ 3–4),
 * and its error enters both w1·x and w3·x of the product silu(gate)·up: ≈ 3e-3. The hidden state
 * is heavy-tailed (max/rms ≈ 5–12, growing with ffn) and is quantised again before w2: ≈ 3–7e-3.
 * Independent, they add in quadrature to the ≈ 7e-3 measured (a float64 model of the two roundings
 * alone gives 4–8e-3). The bound is 1.5× the measured worst; one bit fewer (±255) doubles the error
 * to ≈ 1.5e-2 and fails it (checked against a mutated copy of the kernel).
 */
const RELATIVE_ERROR_BOUND = 1.1e-2;

describe('accuracy against float64', () => {
  it.each([
    [256, 512],
    [1024, 3584],
  ])(`dim %i / ffn %i: relative L2 error per row stays under ${RELATIVE_ERROR_BOUND}`, (dim, ffn) => {
    const rows = 3;
    const kernel = makeKernel(dim, ffn, 2);
    const weights = pageIn(kernel, expertImage(dim, ffn, 2024 + dim, false), dim, ffn);
    const x = randomActivations(77 + dim, rows * dim);
    const y = kernel.run(x, rows, weights);
    const reference = float64Expert(x, rows, weights, dim, ffn);
    let worst = 0;
    for (let r = 0; r < rows; r++) {
      let error = 0;
      let norm = 0;
      for (let n = r * dim; n < (r + 1) * dim; n++) {
        error += (y[n]! - reference[n]!) ** 2;
        norm += reference[n]! ** 2;
      }
      expect(norm, 'the reference output is not degenerate').toBeGreaterThan(1e-6 * dim);
      worst = Math.max(worst, Math.sqrt(error / norm));
    }
    console.info(`int4 kernel, dim ${dim} / ffn ${ffn}: worst relative L2 error ${worst.toExponential(2)}`);
    expect(worst).toBeGreaterThan(0); // activations really are quantised
    expect(worst).toBeLessThan(RELATIVE_ERROR_BOUND);
  });
});

// ── the buffer pool and the helper's lifetime ──────────────────────────────────────────────────

describe('buffers', () => {
  it('refuses weights outside its buffers with a RangeError', () => {
    const [dim, ffn] = [64, 160];
    const kernel = makeKernel(dim, ffn, 2);
    pageIn(kernel, expertImage(dim, ffn, 3, false), dim, ffn); // it has an arena, just not this expert
    const x = randomActivations(4, dim);
    const plain = allocateExpert(dim, ffn, 4);
    plain.bytes.set(expertImage(dim, ffn, 3, false));
    expect(() => kernel.run(x, 1, plain.weights)).toThrow(RangeError);
    const other = makeKernel(dim, ffn, 1);
    const foreign = pageIn(other, expertImage(dim, ffn, 3, false), dim, ffn);
    expect(() => kernel.run(x, 1, foreign)).toThrow(RangeError);
    expect(() => makeKernel(dim, ffn, 1).run(x, 1, foreign)).toThrow(RangeError); // a kernel with no arena yet
  });

  it('hands out disjoint buffers of bufferBytes, and a released buffer again', () => {
    const [dim, ffn] = [64, 160];
    const bytes = expertFileBytes(dim, ffn, 4);
    const kernel = makeKernel(dim, ffn, 1, 3);
    const held = [kernel.allocate(), kernel.allocate(), kernel.allocate()];
    for (const buffer of held) expect(buffer.byteLength).toBe(bytes);
    const ranges = held.map((b) => [b.byteOffset, b.byteOffset + b.byteLength] as const).sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < ranges.length; i++) expect(ranges[i]![0]).toBeGreaterThanOrEqual(ranges[i - 1]![1]);
    expect(new Set(held.map((b) => b.buffer)).size).toBe(1);

    kernel.release(held[1]!);
    const again = kernel.allocate();
    expect(again.buffer).toBe(held[1]!.buffer);
    expect(again.byteOffset).toBe(held[1]!.byteOffset);
    // The reused buffer runs like a fresh one.
    const image = expertImage(dim, ffn, 8, true);
    again.set(image);
    const weights = int4Views(again, dim, ffn);
    const x = randomActivations(9, 2 * dim);
    expectBitIdentical(kernel.run(x, 2, weights), runInt4ExpertScalar(x, 2, weights, dim, ffn), 'reused buffer');
    // The pool was full again, so the next buffer comes from a new arena.
    expect(kernel.allocate().buffer).not.toBe(held[0]!.buffer);
  });
});

describe('dispose', () => {
  it('resolves and terminates the helper thread; a one-thread kernel disposes too', async () => {
    const [dim, ffn] = [1024, 2048];
    const kernel = new Int4ExpertKernel({ dim, ffn, bufferBytes: expertFileBytes(dim, ffn, 4), expectedBuffers: 1, threads: 2 });
    const helper = workers.at(-1)!;
    expect(helper).toBeInstanceOf(NodeWorker);
    // A helper left running would never exit: give up after 5 s rather than at the test timeout.
    const exited = new Promise<number | 'still running'>((resolve) => {
      helper.once('exit', resolve);
      setTimeout(() => resolve('still running'), 5000).unref();
    });
    const weights = pageIn(kernel, expertImage(dim, ffn, 12, false), dim, ffn);
    kernel.run(randomActivations(13, dim), 1, weights); // the helper has worked and is blocked waiting for a job
    await expect(kernel.dispose()).resolves.toBeUndefined();
    await expect(exited).resolves.toBeTypeOf('number');
    expect(helper.threadId).toBe(-1);

    await expect(makeKernel(64, 160, 1).dispose()).resolves.toBeUndefined();
  });
});
