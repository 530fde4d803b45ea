/**
 * MatMulNBits weight packing: block-32 symmetric quantization, low nibble first for 4 bits, and
 * dequantization error bounded by half a quantization step.
 */
import { describe, expect, it } from 'vitest';
import { dequantizeMatrix, quantizeMatrix } from './quantize.ts';

describe('quantizeMatrix', () => {
  it('packs 4-bit values low nibble first, the block extreme mapping to -8', () => {
    const row = Float32Array.from({ length: 32 }, (_, i) => (i === 0 ? -1.6 : i === 1 ? 0.2 : 0));
    const q = quantizeMatrix(row, 1, 32, 4);
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
    const q = quantizeMatrix(Float32Array.from({ length: 40 }, () => 0.5), 1, 40, 4);
    expect(q.scales.length).toBe(2);
    expect(Array.from(dequantizeMatrix(q))).toEqual(new Array(40).fill(0.5));
  });

  it.each([4, 8] as const)('dequantizes %i-bit weights within half a step of the original', (bits) => {
    const n = 8;
    const k = 96;
    const weight = Float32Array.from({ length: n * k }, (_, i) => Math.sin(i * 12.9898) * 0.3);
    const q = quantizeMatrix(weight, n, k, bits);
    const restored = dequantizeMatrix(q);
    for (let i = 0; i < weight.length; i++) {
      const step = Math.abs(q.scales[Math.floor(i / k) * (k / 32) + Math.floor((i % k) / 32)]);
      // 4-bit: values of the opposite sign to the extreme may clip at +7 steps (one extra step).
      expect(Math.abs(restored[i] - weight[i])).toBeLessThanOrEqual(step * (bits === 4 ? 1 : 0.5) + 1e-7);
    }
  });
});
