/**
 * expNegative is e^-d for the sampler's softmax weights: as accurate as Math.exp for sampling
 * (a few units in the last place over the whole normal range), exact at the ends, and monotone.
 */
import { describe, expect, it } from 'vitest';
import { expNegative } from './exp-negative.ts';

/** Distances spread over [0, to), with the points just around multiples of ln2/2 where the reduction switches k. */
function distances(to: number, count: number): number[] {
  const points: number[] = [];
  for (let i = 0; i < count; i++) points.push((i / count) * to);
  for (let k = 0; k * (Math.LN2 / 2) < to; k++) {
    const edge = k * (Math.LN2 / 2);
    points.push(edge, edge * (1 - Number.EPSILON), edge * (1 + Number.EPSILON));
  }
  return points;
}

describe('expNegative', () => {
  it('is within 8 units in the last place of Math.exp wherever e^-d is a normal double', () => {
    let worst = 0;
    for (const d of distances(708, 400_000)) {
      const exact = Math.exp(-d);
      worst = Math.max(worst, Math.abs(expNegative(d) - exact) / exact);
    }
    expect(worst).toBeLessThan(8 * Number.EPSILON);
  });

  it('stays within one subnormal step of Math.exp down to underflow', () => {
    for (const d of distances(746, 20_000).filter((d) => d >= 708)) {
      expect(Math.abs(expNegative(d) - Math.exp(-d))).toBeLessThanOrEqual(Number.MIN_VALUE * 2 + Math.exp(-d) * 1e-13);
    }
  });

  it('is exact at the ends: 1 at 0, 0 beyond underflow and at infinity, NaN for NaN', () => {
    expect(expNegative(0)).toBe(1);
    expect(expNegative(Number.MIN_VALUE)).toBe(1);
    expect(expNegative(746)).toBe(0);
    expect(expNegative(Number.MAX_VALUE)).toBe(0);
    expect(expNegative(Number.POSITIVE_INFINITY)).toBe(0);
    expect(expNegative(Number.NaN)).toBeNaN();
  });

  it('never increases with the distance', () => {
    const increases: number[] = [];
    let previous = expNegative(0);
    for (let i = 1; i <= 200_000; i++) {
      const value = expNegative(i * 0.0005);
      if (value > previous) increases.push(i * 0.0005);
      previous = value;
    }
    expect(increases).toEqual([]);
  });
});
