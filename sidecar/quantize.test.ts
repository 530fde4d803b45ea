/**
 * MatMulNBits weight packing: blockwise symmetric quantization (int4 blocks of 128, int8 blocks of
 * 32), low nibble first for 4 bits, dequantization error bounded by half a quantization step.
 */
import { describe, expect, it } from 'vitest';
import { blockSizeFor, dequantizeMatrix, quantizeMatrix } from './quantize.ts';

describe('quantizeMatrix', () => {
  it('uses blocks of 128 for int4 (fast CPU kernel) and 32 for int8', () => {
    expect([blockSizeFor(4), blockSizeFor(8)]).toEqual([128, 32]);
    const q = quantizeMatrix(new Float32Array(256), 1, 256, 4);
    expect([q.blockSize, q.scales.length, q.packed.length]).toEqual([128, 2, 128]);
  });

  it('packs 4-bit values low nibble first, the block extreme mapping to -8', () => {
    const row = Float32Array.from({ length: 32 }, (_, i) => (i === 0 ? -1.6 : i === 1 ? 0.2 : 0));
    const q = quantizeMatrix(row, 1, 32, 4, 32);
    expect(q.scales[0]).toBeCloseTo(0.2, 6); // -1.6 / -8
    expect(q.packed.length).toBe(16);
    expect(q.packed[0]).toBe(0 | (9 << 4)); // element 0 → -8+8 = 0, element 1 → 1+8 = 9
    expect(q.packed[1]).toBe(8 | (8 << 4)); // zeros → the implicit zero point 8
  });

  it('uses ±127 for 8 bits, one byte per value', () => {
    const row = Float32Array.from({ length: 32 }, (_, i) => (i - 16) / 16);
    const q = quantizeMatrix(row, 1, 32, 8);
    expect(q.scales[0]).toBeCloseTo(1 / 127, 8);
    expect(q.packed.length).toBe(32);
    expect(q.packed[0]).toBe(128 - 127);
  });

  it('pads a partial last block with the zero point', () => {
    const q = quantizeMatrix(Float32Array.from({ length: 40 }, () => 0.5), 1, 40, 4, 32);
    expect(q.scales.length).toBe(2);
    expect(Array.from(dequantizeMatrix(q))).toEqual(new Array(40).fill(0.5));
  });

  it.each([4, 8] as const)('dequantizes %i-bit weights within half a step of the original', (bits) => {
    const n = 8;
    const k = 256;
    const weight = Float32Array.from({ length: n * k }, (_, i) => Math.sin(i * 12.9898) * 0.3);
    const q = quantizeMatrix(weight, n, k, bits);
    const restored = dequantizeMatrix(q);
    for (let i = 0; i < weight.length; i++) {
      const step = Math.abs(q.scales[Math.floor(i / k) * (k / q.blockSize) + Math.floor((i % k) / q.blockSize)]);
      // 4-bit: values of the opposite sign to the extreme may clip at +7 steps (one extra step).
      expect(Math.abs(restored[i] - weight[i])).toBeLessThanOrEqual(step * (bits === 4 ? 1 : 0.5) + 1e-7);
    }
  });
});
