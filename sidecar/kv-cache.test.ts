/**
 * The per-step batch layout: which keys each query may see (causality, sliding window, padding),
 * RoPE angles per absolute position, and how present KV flows back into each sequence's cache.
 */
import { describe, expect, it } from 'vitest';
import { BatchStep, SequenceCache, type CacheShape } from './kv-cache.ts';

const shape = (window: number | null): CacheShape => ({ layers: 1, kvHeads: 1, headDim: 2, window });

/** The mask as rows of '1' (may attend) and '.' (masked) for readability. */
function pattern(step: BatchStep, b: number): string[] {
  const mask = step.mask();
  return Array.from({ length: step.seq }, (_, i) =>
    Array.from({ length: step.total }, (_, j) => (mask[(b * step.seq + i) * step.total + j] === 0 ? '1' : '.')).join(''),
  );
}

describe('attention mask', () => {
  it('is causal over cached and new positions', () => {
    const cache = new SequenceCache(1, shape(null));
    cache.length = cache.entries = 2;
    const step = new BatchStep([{ cache, tokens: [5, 6, 7] }], shape(null));
    expect([step.past, step.seq]).toEqual([2, 3]);
    expect(pattern(step, 0)).toEqual(['111..', '1111.', '11111']);
  });

  it('lets a query at position i see keys i-W+1 … i only', () => {
    const cache = new SequenceCache(1, shape(3));
    cache.length = cache.entries = 3; // positions 0, 1, 2 cached
    const step = new BatchStep([{ cache, tokens: [5, 6] }], shape(3)); // positions 3, 4
    expect(pattern(step, 0)).toEqual(['.111.', '..111']);
  });

  it('pads a ragged batch: short entries see only their own keys, padding rows see themselves', () => {
    const long = new SequenceCache(1, shape(null));
    long.length = long.entries = 2;
    const short = new SequenceCache(2, shape(null));
    const step = new BatchStep(
      [
        { cache: long, tokens: [1] },
        { cache: short, tokens: [1, 2] },
      ],
      shape(null),
    );
    expect([step.past, step.seq]).toEqual([2, 2]);
    expect(pattern(step, 0)).toEqual(['111.', '...1']);
    expect(pattern(step, 1)).toEqual(['..1.', '..11']);
  });
});

describe('RoPE tables', () => {
  it('use each token’s absolute position', () => {
    const cache = new SequenceCache(1, shape(null));
    cache.length = cache.entries = 4;
    const { cos, sin } = new BatchStep([{ cache, tokens: [9] }], shape(null)).rope(10000);
    // head_dim 2: one frequency, θ^0 = 1, so the angle is the position itself.
    expect(cos[0]).toBeCloseTo(Math.cos(4), 6);
    expect(sin[0]).toBeCloseTo(Math.sin(4), 6);
  });
});

describe('present KV back into the caches', () => {
  it('keeps each entry’s cached and real new rows, dropping padding', () => {
    const a = new SequenceCache(1, shape(null));
    a.length = a.entries = 1;
    a.keys[0] = Float32Array.of(10, 11);
    a.values[0] = Float32Array.of(20, 21);
    const b = new SequenceCache(2, shape(null));
    const step = new BatchStep(
      [
        { cache: a, tokens: [1] },
        { cache: b, tokens: [1, 2] },
      ],
      shape(null),
    );
    expect(Array.from(step.pastTensor(0, 'keys'))).toEqual([10, 11, 0, 0]);
    // present [B=2, kv=1, P+S=3, hd=2]: entry a = [cached, new, pad], entry b = [pad, new1, new2]
    step.store(0, 'keys', Float32Array.of(10, 11, 12, 13, 0, 0, /* b */ 0, 0, 30, 31, 32, 33));
    step.store(0, 'values', new Float32Array(12));
    step.commit();
    expect(Array.from(a.keys[0])).toEqual([10, 11, 12, 13]);
    expect(Array.from(b.keys[0])).toEqual([30, 31, 32, 33]);
    expect([a.length, a.entries, b.length, b.entries]).toEqual([2, 2, 2, 2]);
  });

  it('changes nothing until commit, so a step that fails half-way leaves the sequence intact', () => {
    const cache = new SequenceCache(1, shape(null));
    const step = new BatchStep([{ cache, tokens: [1] }], shape(null));
    step.store(0, 'keys', Float32Array.of(1, 2));
    expect([cache.length, cache.entries, cache.keys[0].length]).toEqual([0, 0, 0]);
  });

  it('trims a sliding-window cache to the last W-1 entries once it grows past the slack', () => {
    const cache = new SequenceCache(1, shape(4));
    const step = new BatchStep([{ cache, tokens: Array.from({ length: 100 }, () => 1) }], shape(4));
    step.store(0, 'keys', Float32Array.from({ length: 200 }, (_, i) => i));
    step.store(0, 'values', new Float32Array(200));
    step.commit();
    expect([cache.length, cache.entries]).toEqual([100, 3]);
    expect(Array.from(cache.keys[0])).toEqual([194, 195, 196, 197, 198, 199]);
  });
});
