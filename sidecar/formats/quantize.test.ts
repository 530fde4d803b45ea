/**
 * MatMulNBits weight packing: blockwise symmetric quantization, low nibble first for 4 bits.
 * int8 stores: blocks of 32, plain round-to-nearest. int4 stores: blocks of 128 with
 * error-minimising scales, except the lm_head (output.weight), which stays int8.
 */
import { describe, expect, it } from 'vitest';
import { dequantizeMatrix, type QuantizedMatrix, type QuantScheme, quantizationPlan, quantizeMatrix, schemeFor } from './quantize.ts';

const INT4_ABSMAX: QuantScheme = { bits: 4, blockSize: 32, mode: 'absmax' };
const INT4_SEARCH: QuantScheme = { bits: 4, blockSize: 32, mode: 'search' };

/** Deterministic bell-shaped weights (sum of uniforms), the kind of values a linear layer holds. */
function randomWeights(length: number, seed = 7): Float32Array {
  let state = seed;
  const uniform = () => {
    state = (state * 1103515245 + 12345) % 2147483648;
    return state / 2147483648;
  };
  return Float32Array.from({ length }, () => (uniform() + uniform() + uniform() - 1.5) * 0.1);
}

function squaredError(weight: Float32Array, q: QuantizedMatrix): number {
  const restored = dequantizeMatrix(q);
  return weight.reduce((sum, v, i) => sum + (v - restored[i]!) ** 2, 0); // the same [n, k] shape
}

/** The scale of the block that holds element `i` of a row-major [n, k] matrix. */
function stepOf(q: QuantizedMatrix, i: number): number {
  const blocks = Math.ceil(q.k / q.blockSize);
  return Math.abs(q.scales[Math.floor(i / q.k) * blocks + Math.floor((i % q.k) / q.blockSize)]!);
}

describe('quantizationPlan', () => {
  it('int8 stores: every linear at 8 bits, blocks of 32, plain round-to-nearest', () => {
    const plan = quantizationPlan('int8');
    for (const tensor of ['layers.0.attention.wo.weight', 'output.weight'])
      expect(schemeFor(plan, tensor)).toEqual({ bits: 8, blockSize: 32, mode: 'absmax' });
  });

  it('int4 stores: linears at 4 bits in blocks of 128 with searched scales; the lm_head stays int8', () => {
    const plan = quantizationPlan('int4');
    expect(schemeFor(plan, 'layers.3.feed_forward.w2.weight')).toEqual({ bits: 4, blockSize: 128, mode: 'search' });
    expect(schemeFor(plan, 'output.weight')).toEqual({ bits: 8, blockSize: 32, mode: 'absmax' });
  });
});

describe('schemeFor', () => {
  it("gives stacked linears their parts' common override, else the plan's scheme", () => {
    const plan = quantizationPlan('int4');
    const q = 'layers.0.attention.wq.weight';
    const k = 'layers.0.attention.wk.weight';
    const v = 'layers.0.attention.wv.weight';
    const block32: QuantScheme = { bits: 4, blockSize: 32, mode: 'search' };
    plan.overrides[q] = block32;
    plan.overrides[k] = { ...block32 };
    expect(schemeFor(plan, `${q}+${k}`)).toEqual(block32);
    expect(schemeFor(plan, `${q}+${k}+${v}`)).toEqual(plan.linears);
    plan.overrides[v] = { ...block32, blockSize: 64 };
    expect(schemeFor(plan, `${q}+${k}+${v}`)).toEqual(plan.linears);
  });
});

describe('quantizeMatrix', () => {
  it('stores one scale per block and block×bits/8 bytes per block', () => {
    const q = quantizeMatrix(new Float32Array(2 * 256), 2, 256, { bits: 4, blockSize: 128, mode: 'search' });
    expect([q.scales.length, q.packed.length]).toEqual([4, 256]);
    const q8 = quantizeMatrix(new Float32Array(2 * 256), 2, 256, { bits: 8, blockSize: 32, mode: 'absmax' });
    expect([q8.scales.length, q8.packed.length]).toEqual([16, 512]);
  });

  it('packs 4-bit values low nibble first, the block extreme mapping to -8 (absmax)', () => {
    const row = Float32Array.from({ length: 32 }, (_, i) => (i === 0 ? -1.6 : i === 1 ? 0.2 : 0));
    const q = quantizeMatrix(row, 1, 32, INT4_ABSMAX);
    expect(q.scales[0]).toBeCloseTo(0.2, 6); // -1.6 / -8
    expect(q.packed.length).toBe(16);
    expect(q.packed[0]).toBe(0 | (9 << 4)); // element 0 → -8+8 = 0, element 1 → 1+8 = 9
    expect(q.packed[1]).toBe(8 | (8 << 4)); // zeros → the implicit zero point 8
  });

  it('uses ±127 for 8 bits, one byte per value', () => {
    const row = Float32Array.from({ length: 32 }, (_, i) => (i - 16) / 16);
    const q = quantizeMatrix(row, 1, 32, { bits: 8, blockSize: 32, mode: 'absmax' });
    expect(q.scales[0]).toBeCloseTo(1 / 127, 8);
    expect(q.packed.length).toBe(32);
    expect(q.packed[0]).toBe(128 - 127);
  });

  it.each([INT4_ABSMAX, INT4_SEARCH])('pads a partial last block with the zero point (%o)', (scheme) => {
    const q = quantizeMatrix(
      Float32Array.from({ length: 40 }, () => 0.5),
      1,
      40,
      scheme,
    );
    expect(q.scales.length).toBe(2);
    expect(q.packed.subarray(20)).toEqual(new Uint8Array(12).fill(0x88)); // elements 40…63
    expect(Array.from(dequantizeMatrix(q))).toEqual(new Array(40).fill(0.5));
  });

  it('an all-zero block gets scale 0 and dequantizes to zeros in every mode', () => {
    for (const scheme of [INT4_ABSMAX, INT4_SEARCH]) {
      const q = quantizeMatrix(new Float32Array(32), 1, 32, scheme);
      expect(q.scales[0]).toBe(0);
      expect(Array.from(dequantizeMatrix(q))).toEqual(new Array(32).fill(0));
    }
  });

  it.each([
    [4, 'absmax', 1],
    [8, 'absmax', 0.5],
  ] as const)('%i-bit %s restores every weight within %f of its block step', (bits, mode, steps) => {
    const n = 8;
    const k = 256;
    const weight = Float32Array.from({ length: n * k }, (_, i) => Math.sin(i * 12.9898) * 0.3);
    const q = quantizeMatrix(weight, n, k, { bits, blockSize: 32, mode });
    const restored = dequantizeMatrix(q);
    // 4-bit: values of the opposite sign to the extreme may clip at +7 steps (one extra step).
    for (let i = 0; i < weight.length; i++) expect(Math.abs(restored[i]! - weight[i]!)).toBeLessThanOrEqual(stepOf(q, i) * steps + 1e-7);
  });

  it('search: never a larger squared error than absmax in any block, and clearly smaller overall', () => {
    const n = 64;
    const k = 256;
    const weight = randomWeights(n * k);
    for (const blockSize of [32, 128]) {
      for (let row = 0; row < n; row += 7) {
        for (let start = row * k; start < (row + 1) * k; start += blockSize) {
          const block = weight.slice(start, start + blockSize);
          const error = (mode: 'absmax' | 'search') =>
            squaredError(block, quantizeMatrix(block, 1, blockSize, { bits: 4, blockSize, mode }));
          expect(error('search')).toBeLessThanOrEqual(error('absmax') * (1 + 1e-9));
        }
      }
      const absmax = quantizeMatrix(weight, n, k, { bits: 4, blockSize, mode: 'absmax' });
      const search = quantizeMatrix(weight, n, k, { bits: 4, blockSize, mode: 'search' });
      expect(squaredError(weight, search)).toBeLessThan(0.9 * squaredError(weight, absmax));
    }
  });

  it('search: the scale is the least-squares fit of the chosen levels', () => {
    const weight = randomWeights(128, 3);
    const q = quantizeMatrix(weight, 1, 128, { bits: 4, blockSize: 128, mode: 'search' });
    const levels = Array.from(dequantizeMatrix({ ...q, scales: Float32Array.of(1) }));
    const fitted = levels.reduce((sum, l, i) => sum + l * weight[i]!, 0) / levels.reduce((sum, l) => sum + l * l, 0);
    expect(q.scales[0]).toBeCloseTo(fitted, 7);
  });
});
