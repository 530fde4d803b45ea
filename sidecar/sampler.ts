/**
 * Picks the next token from a row of logits: greedy at temperature 0, otherwise temperature
 * softmax restricted to the top-p nucleus, drawn with a seeded PRNG so that a `random_seed`
 * reproduces the same tokens in every run and process (given the same logits).
 *
 * PRNG: xoshiro128** (Blackman & Vigna), its state filled by SplitMix64 from the 64-bit seed, as
 * the authors recommend. Each sampler owns its generator, so concurrent requests do not interfere.
 */
import { randomBytes } from 'node:crypto';
import { invalidRequest } from './errors.ts';

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
  const words = [next64(), next64()];
  const s = new Uint32Array([Number(words[0] & 0xffffffffn), Number(words[0] >> 32n), Number(words[1] & 0xffffffffn), Number(words[1] >> 32n)]);
  const rotl = (x: number, k: number) => (x << k) | (x >>> (32 - k));
  return () => {
    const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
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
    if (logits[i] > bestValue) {
      bestValue = logits[i];
      best = i;
    }
  }
  return best;
}

export function createSampler(options: SamplingOptions): Sampler {
  validate(options);
  const { temperature, topP } = options;
  if (temperature === 0) return { sample: argmax };
  const random = createRandom(options.seed ?? randomBytes(8).readBigUInt64LE());
  let weights = new Float64Array(0);
  let sorted = new Float64Array(0);
  return {
    sample(logits: Float32Array): number {
      if (weights.length !== logits.length) {
        weights = new Float64Array(logits.length);
        sorted = new Float64Array(logits.length);
      }
      // Softmax in float64 after subtracting the maximum: no overflow, and the top token keeps weight 1.
      const max = logits[argmax(logits)];
      if (!Number.isFinite(max)) return argmax(logits);
      let total = 0;
      for (let i = 0; i < logits.length; i++) {
        const w = Math.exp((logits[i] - max) / temperature); // NaN logits count as 0 below
        weights[i] = w > 0 ? w : 0;
        total += weights[i];
      }
      if (topP >= 1) return pick(weights, 0, total * random());
      // Nucleus: the most likely tokens whose weights first reach topP of the total. A native
      // numeric sort of the weights finds the cut-off weight; tokens at or above it are kept.
      sorted.set(weights);
      const descending = sorted.sort().reverse();
      let nucleus = 0;
      let threshold = descending[0];
      for (let k = 0; k < descending.length && nucleus < topP * total; k++) {
        threshold = descending[k];
        nucleus += threshold;
      }
      let kept = 0;
      for (let i = 0; i < weights.length; i++) if (weights[i] >= threshold) kept += weights[i];
      return pick(weights, threshold, kept * random());
    },
  };
}

/** The token (among those with weight ≥ `threshold`) whose cumulative-weight interval contains `target`. */
function pick(weights: Float64Array, threshold: number, target: number): number {
  let cumulative = 0;
  let last = -1;
  for (let id = 0; id < weights.length; id++) {
    const w = weights[id];
    if (w === 0 || w < threshold) continue;
    cumulative += w;
    last = id;
    if (target < cumulative) return id;
  }
  return last; // rounding left `target` at the very end of the range
}
