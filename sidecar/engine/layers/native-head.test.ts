/**
 * The native head is the final RMSNorm, activations rounded per block of 32 to int8, and lm_head's
 * Q8_0 blocks (rows interleaved four at a time) through the native product: bit for bit what the block kernel's plain-JS reference
 * computes from the same rounded activations, with one thread or with its helper thread taking
 * chunks of the vocabulary, over more rows than one call holds. Shapes it cannot run are refused.
 * x86-64 only, where `npm ci` builds the native addon.
 */
import { describe, expect, it } from 'vitest';
import { interleaveQ8_0Rows, quantizeBlocks } from '../../formats/blocks.ts';
import { ACTIVATION_RECORD_BYTES, blockGemmScalar, quantizeActivations } from '../experts/block-kernel.ts';
import { loadNativeGemm } from '../experts/native-gemm.ts';
import { type HeadShape, layerProductsAgree, NativeHead } from './native-head.ts';

const native = loadNativeGemm().gemm;

/** Deterministic values in [-1, 1). */
function pseudoRandom(count: number, seed: number): Float32Array {
  let state = seed;
  return Float32Array.from({ length: count }, () => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    return state / 2 ** 31 - 1;
  });
}

/** A head file's payload (the norm's weights, then lm_head's Q8_0 blocks, rows interleaved four at a time) and lm_head's blocks in row order. */
function headPayload({ vocabSize, dim }: HeadShape, seed: number): { payload: Uint8Array; rowOrder: Uint8Array } {
  const rowOrder = new Uint8Array(vocabSize * (dim / 32) * 34);
  quantizeBlocks('q8_0', pseudoRandom(vocabSize * dim, seed + 1), vocabSize, dim, rowOrder);
  const payload = new Uint8Array(4 * dim + rowOrder.length);
  new Float32Array(payload.buffer, 0, dim).set(pseudoRandom(dim, seed).map((v) => 1 + v / 2));
  interleaveQ8_0Rows(rowOrder, vocabSize, dim, payload.subarray(4 * dim));
  return { payload, rowOrder };
}

/** The same steps in plain JS: RMSNorm, per-block int8 activations, the block kernel's reference product. */
function referenceLogits(
  { payload, rowOrder }: ReturnType<typeof headPayload>,
  shape: HeadShape,
  hidden: Float32Array,
  rows: number[],
): Float32Array {
  const { vocabSize, dim, normEps } = shape;
  const norm = new Float32Array(payload.buffer, 0, dim);
  const normed = new Float32Array(rows.length * dim);
  rows.forEach((row, i) => {
    const x = hidden.subarray(row * dim, (row + 1) * dim);
    const scale = 1 / Math.sqrt(x.reduce((sum, v) => sum + v * v, 0) / dim + normEps);
    for (let d = 0; d < dim; d++) normed[i * dim + d] = x[d]! * scale * norm[d]!;
  });
  const records = new Uint8Array(rows.length * (dim / 32) * ACTIVATION_RECORD_BYTES);
  quantizeActivations(normed, 0, rows.length, dim, records);
  const out = new Float32Array(rows.length * vocabSize);
  blockGemmScalar('q8_0', rowOrder, vocabSize, dim, rows.length, records, out);
  return out;
}

describe.runIf(process.arch === 'x64')('the native head', () => {
  const shape: HeadShape = { vocabSize: 1000, dim: 128, normEps: 1e-5 };

  it('computes the plain-JS reference bit for bit, on one thread and on two, beyond one call of rows', async () => {
    const head3 = headPayload(shape, 3);
    const hidden = pseudoRandom(24 * shape.dim, 9).map((v) => 4 * v);
    // 20 of 24 hidden rows, out of order and one twice: more than one call holds (16).
    const rows = [23, 0, 5, 5, 17, 2, 9, 11, 3, 8, 1, 22, 14, 6, 7, 19, 20, 4, 10, 13];
    const expected = referenceLogits(head3, shape, hidden, rows);
    for (const threads of [1, 2]) {
      const head = new NativeHead(head3.payload, shape, native!, threads);
      try {
        for (let run = 0; run < 3; run++) expect(await head.run(hidden, BigInt64Array.from(rows.map(BigInt)))).toEqual(expected);
      } finally {
        await head.dispose();
      }
    }
  });

  it("shares the vocabulary with the addon's helper thread: an 8192×512 head, the helper's chunks counted, the same bits", async () => {
    const big: HeadShape = { vocabSize: 8192, dim: 512, normEps: 1e-5 };
    const { payload } = headPayload(big, 5);
    const hidden = pseudoRandom(8 * big.dim, 11);
    const rows = BigInt64Array.from([0n, 1n, 2n, 3n, 4n, 5n, 6n, 7n]);
    const alone = new NativeHead(payload, big, native!, 1);
    const shared = new NativeHead(payload, big, native!, 2);
    try {
      const before = native!.helperChunks();
      const expected = await alone.run(hidden, rows);
      expect(native!.helperChunks()).toBe(before);
      // A helper that wakes late (busy cores) takes no chunk of a call: run until it has taken some.
      for (let run = 0; run < 5 || (native!.helperChunks() === before && run < 200); run++)
        expect(await shared.run(hidden, rows)).toEqual(expected);
      expect(native!.helperChunks()).toBeGreaterThan(before);
    } finally {
      await Promise.all([alone.dispose(), shared.dispose()]);
    }
  });

  it("agrees with the reference on the layer files' layout at load, and says so when it does not", () => {
    expect(layerProductsAgree(native!)).toBe(true);
    // A product that reads the rows in GGUF's order instead cannot pass the check.
    const wrongLayout = {
      ...native!,
      sharedProduct: (memory: Uint8Array, dims: Int32Array, w: number, x: number, out: number) =>
        native!.sharedProduct(memory, Int32Array.of(dims[0]!, 0, ...dims.subarray(2)), w, x, out),
    };
    expect(layerProductsAgree(wrongLayout)).toBe(false);
  });

  it('refuses a vocabulary it cannot cut into rows of four, and a payload of the wrong size', () => {
    const payloadFor998 = new Uint8Array(4 * shape.dim + 998 * (shape.dim / 32) * 34);
    expect(() => new NativeHead(payloadFor998, { ...shape, vocabSize: 998 }, native!, 1)).toThrow(/998 is not a multiple of 4/);
    expect(() => new NativeHead(headPayload(shape, 1).payload.subarray(1), shape, native!, 1)).toThrow(/takes a \d+-byte payload/);
  });
});
