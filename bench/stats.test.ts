/** The benches' statistics: nearest-rank percentiles and means, so every bench's p50 means the same thing. */
import { describe, expect, it } from 'vitest';
import { mean, percentile, roundTo } from './stats.ts';

describe('percentile', () => {
  it('is the smallest sample with at least p% of the samples at or below it', () => {
    const samples = [5, 1, 4, 2, 3, 10, 9, 8, 7, 6];
    expect(percentile(samples, 50)).toBe(5);
    expect(percentile(samples, 90)).toBe(9);
    expect(percentile(samples, 99)).toBe(10);
    expect(percentile(samples, 100)).toBe(10);
    expect(percentile([42], 1)).toBe(42);
  });

  it('leaves its input unsorted and has no value without samples', () => {
    const samples = [3, 1, 2];
    percentile(samples, 50);
    expect(samples).toEqual([3, 1, 2]);
    expect(percentile([], 50)).toBeUndefined();
  });
});

describe('mean and rounding', () => {
  it('averages and rounds for the tables', () => {
    expect(mean([1, 2, 3, 4])).toBe(2.5);
    expect(mean([])).toBeUndefined();
    expect(roundTo(1.23456, 2)).toBe(1.23);
    expect(roundTo(1.005e3, 0)).toBe(1005);
  });
});
