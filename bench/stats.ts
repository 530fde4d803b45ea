/** Summary statistics the benches report, defined once so every bench's p50 or mean means the same thing. */

/**
 * Nearest-rank percentile, `p` in percent (0–100]: the smallest sample with at least p % of the samples at or
 * below it. `undefined` when there are no samples; each bench reports that in its own way.
 */
export function percentile(samples: readonly number[], p: number): number | undefined {
  if (samples.length === 0) return undefined;
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/** Arithmetic mean; `undefined` when there are no samples. */
export function mean(samples: readonly number[]): number | undefined {
  if (samples.length === 0) return undefined;
  return samples.reduce((sum, sample) => sum + sample, 0) / samples.length;
}

/** `value` rounded to `digits` decimal places, for tables and JSON reports. */
export function roundTo(value: number, digits: number): number {
  return Math.round(value * 10 ** digits) / 10 ** digits;
}
