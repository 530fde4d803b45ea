import { describe, expect, it } from 'vitest';
import { loadNativeGemm } from '../engine/experts/native-gemm.ts';
import { SidecarError } from '../errors.ts';
import { argmax, createRandom, createSampler, softmaxWeights } from './sampler.ts';

/** A reproducible logits row: a few strong tokens over a flat tail. */
function logitsRow(size = 1000): Float32Array {
  const random = createRandom(12345);
  const row = new Float32Array(size);
  for (let i = 0; i < size; i++) row[i] = random() * 4 - 2;
  row[7] = 6;
  row[42] = 5.5;
  row[99] = 5;
  return row;
}

function draw(options: Parameters<typeof createSampler>[0], logits: Float32Array, count: number): number[] {
  const sampler = createSampler(options);
  return Array.from({ length: count }, () => sampler.sample(logits));
}

describe('createRandom (xoshiro128** seeded by SplitMix64)', () => {
  it('gives the same floats in [0, 1) for the same seed and different ones for another seed', () => {
    const a = createRandom(7);
    const b = createRandom(7);
    const c = createRandom(8);
    const first = Array.from({ length: 1000 }, () => a());
    expect(Array.from({ length: 1000 }, () => b())).toEqual(first);
    expect(Array.from({ length: 1000 }, () => c())).not.toEqual(first);
    expect(Math.min(...first)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...first)).toBeLessThan(1);
    const mean = first.reduce((s, x) => s + x, 0) / first.length;
    expect(mean).toBeGreaterThan(0.45);
    expect(mean).toBeLessThan(0.55);
  });

  it('distinguishes seeds beyond 32 bits', () => {
    expect(createRandom(2 ** 40)()).not.toBe(createRandom(2 ** 40 + 2 ** 32)());
  });
});

describe('createSampler', () => {
  it('is greedy at temperature 0: the highest logit, the first on ties, never NaN', () => {
    const row = logitsRow();
    expect(draw({ temperature: 0, topP: 1 }, row, 5)).toEqual([7, 7, 7, 7, 7]);
    expect(argmax(new Float32Array([1, 3, 3, NaN]))).toBe(1);
  });

  it('reproduces the same tokens for the same random_seed', () => {
    const row = logitsRow();
    const options = { temperature: 1, topP: 1, seed: 2024 };
    const first = draw(options, row, 200);
    expect(draw(options, row, 200)).toEqual(first);
    expect(draw({ ...options, seed: 2025 }, row, 200)).not.toEqual(first);
    expect(new Set(first).size).toBeGreaterThan(10); // it really samples
  });

  it('draws tokens with their softmax probabilities', () => {
    const row = new Float32Array([Math.log(0.5), Math.log(0.3), Math.log(0.2)]);
    const counts = [0, 0, 0];
    for (const token of draw({ temperature: 1, topP: 1, seed: 1 }, row, 20_000)) counts[token]!++;
    expect(counts[0]! / 20_000).toBeCloseTo(0.5, 1);
    expect(counts[1]! / 20_000).toBeCloseTo(0.3, 1);
    expect(counts[2]! / 20_000).toBeCloseTo(0.2, 1);
  });

  it('sharpens with low temperature and flattens with high temperature', () => {
    const row = logitsRow();
    const share7 = (temperature: number) => draw({ temperature, topP: 1, seed: 3 }, row, 2000).filter((t) => t === 7).length / 2000;
    expect(share7(0.1)).toBeGreaterThan(0.95);
    expect(share7(0.7)).toBeGreaterThan(share7(2));
  });

  it('keeps only the top-p nucleus', () => {
    // Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.8 keeps the first two, top_p 0.81 the first three.
    const row = new Float32Array([0.5, 0.3, 0.15, 0.05].map(Math.log));
    expect(new Set(draw({ temperature: 1, topP: 0.8, seed: 5 }, row, 2000))).toEqual(new Set([0, 1]));
    expect(new Set(draw({ temperature: 1, topP: 0.81, seed: 5 }, row, 2000))).toEqual(new Set([0, 1, 2]));
    expect(new Set(draw({ temperature: 1, topP: 0.01, seed: 5 }, row, 200))).toEqual(new Set([0]));
  });

  it.each([0.3, 0.6, 0.9])('draws exactly the tokens of the top-p %f nucleus found by sorting', (topP) => {
    const random = createRandom(99);
    const row = new Float32Array(30).map(() => random() * 3);
    const probabilities = Array.from(row, (l) => Math.exp(l));
    const total = probabilities.reduce((a, b) => a + b, 0);
    const byProbability = [...probabilities.keys()].sort((a, b) => probabilities[b]! - probabilities[a]!);
    const nucleus = new Set<number>();
    let mass = 0;
    for (const id of byProbability) {
      if (mass >= topP * total) break;
      nucleus.add(id);
      mass += probabilities[id]!;
    }
    expect(new Set(draw({ temperature: 1, topP, seed: 11 }, row, 30_000))).toEqual(nucleus);
  });

  it('stays finite for huge logits and ignores -Infinity', () => {
    const row = new Float32Array([3e38, 3e38, -Infinity, -3e38]);
    expect(new Set(draw({ temperature: 0.5, topP: 1, seed: 9 }, row, 500))).toEqual(new Set([0, 1]));
  });

  it.each([1, 0.99])('never draws a NaN logit and still samples the rest (top_p %s)', (topP) => {
    const row = new Float32Array([2, Number.NaN, 2, 1]);
    expect(new Set(draw({ temperature: 1, topP, seed: 5 }, row, 2000))).toEqual(new Set([0, 2, 3]));
  });

  it('picks a random seed when none is given', () => {
    const row = logitsRow();
    expect(draw({ temperature: 1, topP: 1 }, row, 50)).not.toEqual(draw({ temperature: 1, topP: 1 }, row, 50));
  });

  it.each([
    [{ temperature: -1, topP: 1 }, 'temperature'],
    [{ temperature: NaN, topP: 1 }, 'temperature'],
    [{ temperature: 1, topP: 0 }, 'top_p'],
    [{ temperature: 1, topP: 1.5 }, 'top_p'],
    [{ temperature: 1, topP: 1, seed: -3 }, 'random_seed'],
    [{ temperature: 1, topP: 1, seed: 1.5 }, 'random_seed'],
  ])('rejects %o with an invalid_request_error naming %s', (options, param) => {
    expect(() => createSampler(options)).toThrow(SidecarError);
    try {
      createSampler(options);
    } catch (error) {
      expect(error).toMatchObject({ type: 'invalid_request_error', param });
    }
  });
});

describe.runIf(process.arch === 'x64')("the addon's softmax weights (x86-64, where npm ci builds it)", () => {
  const native = loadNativeGemm().gemm?.softmaxWeights;

  /** Weights, total and nucleus buckets from both, compared bit for bit (Object.is tells 0 from -0 and matches NaN). */
  function expectSameBits(logits: Float32Array, temperature: number): Uint16Array {
    const max = logits[argmax(logits)] ?? 0;
    const run = (weightsOf: typeof softmaxWeights, withBuckets: boolean) => {
      const weights = new Float64Array(logits.length);
      const buckets = { perNat: 16, ids: new Uint16Array(logits.length), mass: new Float64Array(769) };
      const total = weightsOf(logits, max, temperature, weights, withBuckets ? buckets : undefined);
      return { total, weights, ids: buckets.ids, mass: buckets.mass };
    };
    for (const withBuckets of [false, true]) {
      const fromAddon = run(native!, withBuckets);
      const fromJs = run(softmaxWeights, withBuckets);
      expect(Object.is(fromAddon.total, fromJs.total)).toBe(true);
      const differing = fromJs.weights.findIndex((w, i) => !Object.is(w, fromAddon.weights[i]));
      expect(differing, `token ${differing}: ${fromJs.weights[differing]} in JavaScript, ${fromAddon.weights[differing]} native`).toBe(-1);
      expect(fromAddon.ids).toEqual(fromJs.ids);
      expect(fromAddon.mass.every((m, i) => Object.is(m, fromJs.mass[i]))).toBe(true);
    }
    return run(softmaxWeights, true).ids;
  }

  it('is built here', () => {
    expect(native).toBeTypeOf('function');
  });

  it.each([0.05, 0.7, 1, 1.3, 50])(
    'gives the JavaScript weights and buckets bit for bit on a 32000-token row at temperature %s',
    (temperature) => {
      const random = createRandom(temperature * 1000);
      const buckets = expectSameBits(
        Float32Array.from({ length: 32_000 }, () => (random() - 0.5) * 40),
        temperature,
      );
      expect(new Set(buckets).size).toBeGreaterThan(10); // the nucleus buckets are really spread
    },
  );

  it('gives the same bits where 2^-k leaves the vector path: underflow, subnormals, NaN, -Infinity and a ragged tail', () => {
    // At temperature 1 distances of 700–760 nats cross the scalar path's subnormal range and underflow.
    const row = Float32Array.from({ length: 203 }, (_, i) => -i * 3.8);
    row[5] = Number.NaN;
    row[17] = Number.NEGATIVE_INFINITY;
    row[30] = 3e38;
    row[31] = -3e38;
    expectSameBits(row, 1);
    expectSameBits(row.subarray(0, 3), 1);
    expectSameBits(new Float32Array(0), 1);
  });

  it.each([1, 0.9])('makes the sampler draw the same tokens as the JavaScript weights (top_p %s)', (topP) => {
    const random = createRandom(77);
    const row = Float32Array.from({ length: 4000 }, () => random() * 8);
    const drawWith = (weights: typeof softmaxWeights) => {
      const sampler = createSampler({ temperature: 0.8, topP, seed: 5 }, weights);
      return Array.from({ length: 500 }, () => sampler.sample(row));
    };
    const drawn = drawWith(native!);
    expect(drawn).toEqual(drawWith(softmaxWeights));
    expect(new Set(drawn).size).toBeGreaterThan(50);
  });
});
