/**
 * Picks the next token from a row of logits: greedy at temperature 0, otherwise temperature
 * softmax restricted to the top-p nucleus, drawn with a seeded PRNG so that a `random_seed`
 * reproduces the same tokens in every run and process (given the same logits).
 *
 * PRNG: xoshiro128** (Blackman & Vigna), its state filled by SplitMix64 from the 64-bit seed, as
 * the authors recommend. Each sampler owns its generator, so concurrent requests do not interfere.
 */
import { randomBytes } from 'node:crypto';
import { invalidRequest } from '../errors.ts';
import { expNegative } from './exp-negative.ts';

export interface SamplingOptions {
  /** 0 = greedy (argmax); otherwise logits are divided by it before the softmax. */
  temperature: number;
  /** Nucleus size in (0, 1]: sample among the most likely tokens whose probabilities sum to ≥ topP (ties at the cut-off all kept). */
  topP: number;
  /** Non-negative integer; the same seed and logits give the same tokens. Absent = a random seed. */
  seed?: number;
}

export interface Sampler {
  sample(logits: Float32Array): number;
}

const MASK64 = (1n << 64n) - 1n;

/** SplitMix64 stream: expands one 64-bit seed into well-mixed state words. */
function splitMix64(seed: bigint): () => bigint {
  let state = seed & MASK64;
  return () => {
    state = (state + 0x9e3779b97f4a7c15n) & MASK64;
    let z = state;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
    return z ^ (z >> 31n);
  };
}

/** xoshiro128**: returns uniform floats in [0, 1). */
export function createRandom(seed: number | bigint): () => number {
  const next64 = splitMix64(BigInt(seed));
  const first = next64();
  const second = next64();
  const s = new Uint32Array([Number(first & 0xffffffffn), Number(first >> 32n), Number(second & 0xffffffffn), Number(second >> 32n)]);
  const rotl = (x: number, k: number) => (x << k) | (x >>> (32 - k));
  // `s` has exactly four words, so every index below is in range.
  return () => {
    const result = Math.imul(rotl(Math.imul(s[1]!, 5), 7), 9) >>> 0;
    const t = s[1]! << 9;
    s[2]! ^= s[0]!;
    s[3]! ^= s[1]!;
    s[1]! ^= s[2]!;
    s[0]! ^= s[3]!;
    s[2]! ^= t;
    s[3] = rotl(s[3]!, 11);
    return result / 4294967296;
  };
}

function validate(options: SamplingOptions): void {
  const { temperature, topP, seed } = options;
  if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature < 0) {
    throw invalidRequest(`temperature must be a finite number ≥ 0, got ${String(temperature)}`, 'temperature');
  }
  if (typeof topP !== 'number' || !Number.isFinite(topP) || topP <= 0 || topP > 1) {
    throw invalidRequest(`top_p must be a number in (0, 1], got ${String(topP)}`, 'top_p');
  }
  if (seed !== undefined && (!Number.isSafeInteger(seed) || seed < 0)) {
    throw invalidRequest(`random_seed must be a non-negative integer, got ${String(seed)}`, 'random_seed');
  }
}

/** Index of the largest logit (the first on ties; NaN never wins). */
export function argmax(logits: Float32Array): number {
  let best = 0;
  let bestValue = -Infinity;
  for (let i = 0; i < logits.length; i++) {
    const value = logits[i]!;
    if (value > bestValue) {
      bestValue = value;
      best = i;
    }
  }
  return best;
}

/**
 * Nucleus cut-off without sorting the vocabulary: weights are bucketed by their distance from the
 * top logit, (max − logit) / T, in 1/16-nat steps; buckets are ordered like the weights, so only
 * the bucket where the cumulative weight crosses the target needs sorting (a few dozen tokens).
 */
const BUCKETS_PER_NAT = 16;
const BUCKET_COUNT = 48 * BUCKETS_PER_NAT + 1; // beyond 48 nats (weight < 1e-21) all share the last

/** Where top-p sampling wants each token's weight: its bucket, and each bucket's mass. */
export interface WeightBuckets {
  /** Buckets per nat of distance (max − logit) / T; past (mass.length − 1) / perNat nats, and NaN, the last. */
  perNat: number;
  /** Each token's bucket (written). */
  ids: Uint16Array;
  /** Each bucket's weights added in token order (added to: the caller zeroes it). */
  mass: Float64Array;
}

/**
 * Fills weights[i] = e^−((max − logits[i]) / temperature), 0 for a NaN logit, and returns their sum
 * added in token order; with `buckets`, buckets them too. The engine's addon has the same steps in
 * SIMD (engine/native/softmax-weights.cc, the same bits, 4–5× faster); the serving layer passes it
 * to createSampler where it is built.
 */
export type SoftmaxWeights = (
  logits: Float32Array,
  max: number,
  temperature: number,
  weights: Float64Array,
  buckets?: WeightBuckets,
) => number;

export const softmaxWeights: SoftmaxWeights = (logits, max, temperature, weights, buckets) => {
  let total = 0;
  for (let i = 0; i < logits.length; i++) {
    const distance = (max - logits[i]!) / temperature; // ≥ 0; NaN for NaN logits
    const w = expNegative(distance);
    const weight = Number.isNaN(w) ? 0 : w; // NaN logits count as 0 (Math.max(NaN, 0) is NaN)
    weights[i] = weight;
    total += weight;
    if (buckets) {
      const bucket = distance < buckets.mass.length / buckets.perNat ? Math.floor(distance * buckets.perNat) : buckets.mass.length - 1;
      buckets.ids[i] = bucket;
      buckets.mass[bucket]! += weight;
    }
  }
  return total;
};

function nucleusThreshold(weights: Float64Array, buckets: Uint16Array, bucketMass: Float64Array, target: number): number {
  let cumulative = 0;
  let crossing = 0;
  while (crossing < BUCKET_COUNT - 1 && cumulative + bucketMass[crossing]! < target) cumulative += bucketMass[crossing++]!;
  const members: number[] = [];
  for (let i = 0; i < weights.length; i++) if (buckets[i] === crossing && weights[i]! > 0) members.push(weights[i]!);
  members.sort((a, b) => b - a);
  let threshold = members[0] ?? 1;
  for (const w of members) {
    threshold = w;
    cumulative += w;
    if (cumulative >= target) break;
  }
  return threshold;
}

/** `weightsOf` computes the softmax weights: any implementation with softmaxWeights' bits. */
export function createSampler(options: SamplingOptions, weightsOf: SoftmaxWeights = softmaxWeights): Sampler {
  validate(options);
  const { temperature, topP } = options;
  if (temperature === 0) return { sample: argmax };
  const random = createRandom(options.seed ?? randomBytes(8).readBigUInt64LE());
  let weights = new Float64Array(0);
  let buckets = new Uint16Array(0);
  const bucketMass = new Float64Array(BUCKET_COUNT);
  return {
    sample(logits: Float32Array): number {
      if (weights.length !== logits.length) {
        weights = new Float64Array(logits.length);
        buckets = new Uint16Array(logits.length);
      }
      // Softmax in float64 after subtracting the maximum: no overflow, and the top token keeps weight 1.
      // An empty row has no maximum; like an infinite or NaN one it falls back to argmax.
      const max = logits[argmax(logits)] ?? Number.NaN;
      if (!Number.isFinite(max)) return argmax(logits);
      if (topP >= 1) return pick(weights, 0, weightsOf(logits, max, temperature, weights) * random()); // no nucleus: the weights alone
      bucketMass.fill(0);
      const total = weightsOf(logits, max, temperature, weights, { perNat: BUCKETS_PER_NAT, ids: buckets, mass: bucketMass });
      // Nucleus: the most likely tokens whose weights first reach topP of the total (ties at the cut-off kept).
      const threshold = nucleusThreshold(weights, buckets, bucketMass, topP * total);
      let kept = 0;
      for (let i = 0; i < weights.length; i++) if (weights[i]! >= threshold) kept += weights[i]!;
      return pick(weights, threshold, kept * random());
    },
  };
}

/** The token (among those with weight ≥ `threshold`) whose cumulative-weight interval contains `target`. */
function pick(weights: Float64Array, threshold: number, target: number): number {
  let cumulative = 0;
  let last = -1;
  for (let id = 0; id < weights.length; id++) {
    const w = weights[id]!;
    if (w === 0 || w < threshold) continue;
    cumulative += w;
    last = id;
    if (target < cumulative) return id;
  }
  return last; // rounding left `target` at the very end of the range
}
