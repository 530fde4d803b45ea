/**
 * The per-step batch layout: which keys each query may see (causality, sliding window, padding),
 * RoPE positions, how present KV flows back into each sequence's cache, and how the buffers are
 * recycled.
 */
import { describe, expect, it } from 'vitest';
import { BatchedPast, BatchStep, type CacheShape, SequenceCache } from './kv-cache.ts';
import { KvBufferPool } from './kv-memory.ts';

const shape = (window: number | null): CacheShape => ({ layers: 1, kvHeads: 1, headDim: 2, window });

/** The key buffer of the one layer every shape here has. */
const keysOf = (cache: SequenceCache): Float32Array => cache.keys[0]!;

/** A sequence with `n` tokens already cached (through a real step). */
function prefilled(n: number, window: number | null): SequenceCache {
  const cache = new SequenceCache(1, shape(window));
  const step = new BatchStep([{ cache, tokens: new Array(n).fill(1) }], shape(window));
  step.store(0, 'keys', new Float32Array(n * 2));
  step.store(0, 'values', new Float32Array(n * 2));
  step.commit();
  return cache;
}

/** The mask as rows of '1' (may attend) and '.' (masked) for readability. */
function pattern(step: BatchStep, b: number): string[] {
  const mask = step.mask();
  return Array.from({ length: step.seq }, (_, i) =>
    Array.from({ length: step.total }, (_, j) => (mask[(b * step.seq + i) * step.total + j] === 0 ? '1' : '.')).join(''),
  );
}

describe('attention mask', () => {
  it('is causal over cached and new positions', () => {
    const cache = prefilled(2, null);
    const step = new BatchStep([{ cache, tokens: [5, 6, 7] }], shape(null));
    // The whole buffer (slots 2…63 unused); 3 new tokens padded to 4 rows (an even row count).
    expect([step.past, step.seq]).toEqual([64, 4]);
    const unused = '.'.repeat(62);
    expect(pattern(step, 0)).toEqual([`11${unused}1...`, `11${unused}11..`, `11${unused}111.`, `..${unused}...1`]);
  });

  it('gives an odd decode batch one padding entry that sees only itself', () => {
    const caches = [prefilled(2, null), prefilled(1, null), prefilled(3, null)];
    const step = new BatchStep(
      caches.map((cache) => ({ cache, tokens: [9] })),
      shape(null),
    );
    expect([step.batch, step.seq]).toEqual([4, 1]); // matmuls see 4 rows, never a lone trailing one
    expect(Array.from(step.inputIds())).toEqual([9n, 9n, 9n, 0n]);
    const unused = '.'.repeat(61);
    expect(pattern(step, 3)).toEqual([`...${unused}1`]);
    step.store(0, 'keys', Float32Array.of(1, 1, 2, 2, 3, 3, 4, 4));
    step.store(0, 'values', new Float32Array(8));
    step.commit(); // the padding entry's rows are dropped
    expect(caches.map((c) => Array.from(keysOf(c).subarray(c.entries * 2 - 2, c.entries * 2)))).toEqual([
      [1, 1],
      [2, 2],
      [3, 3],
    ]);
  });

  it('pads nothing where each row is computed on its own (row multiple 1, the native layers)', () => {
    const lone = new BatchStep([{ cache: prefilled(2, null), tokens: [5, 6, 7] }], shape(null), undefined, 1);
    expect([lone.batch, lone.seq]).toEqual([1, 3]);
    const caches = [prefilled(2, null), prefilled(1, null), prefilled(3, null)];
    const odd = new BatchStep(
      caches.map((cache) => ({ cache, tokens: [9] })),
      shape(null),
      undefined,
      1,
    );
    expect([odd.batch, odd.seq]).toEqual([3, 1]);
    expect(Array.from(odd.inputIds())).toEqual([9n, 9n, 9n]);
  });

  it('lets a query at position i see keys i-W+1 … i only', () => {
    const cache = prefilled(3, 3); // positions 0, 1, 2 cached
    const step = new BatchStep([{ cache, tokens: [5, 6] }], shape(3)); // positions 3, 4
    const unused = '.'.repeat(61);
    expect(pattern(step, 0)).toEqual([`.11${unused}1.`, `..1${unused}11`]);
  });

  it('pads a ragged batch: short entries see only their own keys, padding rows see themselves', () => {
    const long = prefilled(2, null);
    const short = new SequenceCache(2, shape(null));
    const step = new BatchStep(
      [
        { cache: long, tokens: [1] },
        { cache: short, tokens: [1, 2] },
      ],
      shape(null),
    );
    expect([step.past, step.seq]).toEqual([64, 2]); // P = the largest buffer in the step
    const unused = '.'.repeat(62);
    expect(pattern(step, 0)).toEqual([`11${unused}1.`, `..${unused}.1`]);
    expect(pattern(step, 1)).toEqual([`..${unused}1.`, `..${unused}11`]);
  });
});

describe('RoPE positions', () => {
  it('are each new token’s absolute position; padding rows get 0', () => {
    const cache = prefilled(4, null);
    const step = new BatchStep([{ cache, tokens: [9] }], shape(null));
    // One entry pads S to an even row count: the second row is padding.
    expect(Array.from(step.positions(), Number)).toEqual([4, 0]);
    expect(step.positionCount).toBe(5);
  });

  it('follow each entry of a batch on its own', () => {
    const longer = prefilled(6, null);
    const shorter = prefilled(2, null);
    const step = new BatchStep(
      [
        { cache: longer, tokens: [1, 2] },
        { cache: shorter, tokens: [3] },
      ],
      shape(null),
    );
    expect(Array.from(step.positions(), Number)).toEqual([6, 7, 2, 0]);
    expect(step.positionCount).toBe(8);
  });
});

describe('new KV into the caches', () => {
  it('a lone sequence passes its whole buffer; unused slots are masked', () => {
    const cache = new SequenceCache(1, shape(null));
    new BatchStep([{ cache, tokens: [1] }], shape(null)).commit();
    expect([cache.entries, cache.capacity]).toEqual([1, 64]);
    const step = new BatchStep([{ cache, tokens: [2] }], shape(null));
    expect([step.past, step.seq]).toEqual([64, 2]); // one padding row: matmuls never run at M=1
    expect(step.pastTensor(0, 'keys')).toBe(keysOf(cache)); // no copy
    expect(pattern(step, 0)).toEqual([`1${'.'.repeat(63)}1.`, `${'.'.repeat(64)}.1`]);
  });

  it('appends each entry’s real new rows after its cached ones, dropping padding', () => {
    const a = new SequenceCache(1, shape(null));
    new BatchStep([{ cache: a, tokens: [1] }], shape(null)).commit();
    keysOf(a).set([10, 11]);
    const b = new SequenceCache(2, shape(null));
    const step = new BatchStep(
      [
        { cache: a, tokens: [1] },
        { cache: b, tokens: [1, 2] },
      ],
      shape(null),
    );
    expect([step.past, step.seq]).toEqual([64, 2]);
    const past = step.pastTensor(0, 'keys'); // [B=2, kv=1, P=64, hd=2]
    expect(Array.from(past.subarray(0, 4))).toEqual([10, 11, 0, 0]);
    expect(past.length).toBe(2 * 64 * 2);
    // new keys [B=2, kv=1, S=2, hd=2]: entry a = [new, pad], entry b = [new1, new2]
    step.store(0, 'keys', Float32Array.of(12, 13, 0, 0, /* b */ 30, 31, 32, 33));
    step.store(0, 'values', new Float32Array(8));
    step.commit();
    expect(Array.from(keysOf(a).subarray(0, 4))).toEqual([10, 11, 12, 13]);
    expect(Array.from(keysOf(b).subarray(0, 4))).toEqual([30, 31, 32, 33]);
    expect([a.length, a.entries, b.length, b.entries]).toEqual([2, 2, 2, 2]);
  });

  it('keeps a batch’s past tensors across steps, copying in only the new slots, and rebuilds them when the layout changes', () => {
    const window = shape(70);
    const other = prefilled(3, 70);
    const grower = prefilled(5, 70);
    const caches = [other, grower];
    const reuse = new BatchedPast(window);
    /** One decode step over both caches writing key value `v` for each; returns the step's past keys. */
    const decode = (v: number) => {
      const step = new BatchStep(
        caches.map((cache) => ({ cache, tokens: [1] })),
        window,
        reuse,
      );
      const past = step.pastTensor(0, 'keys');
      const fresh = new BatchStep(
        caches.map((cache) => ({ cache, tokens: [1] })),
        window,
      ).pastTensor(0, 'keys');
      expect(Array.from(past)).toEqual(Array.from(fresh)); // what a step built from scratch sees
      step.store(0, 'keys', Float32Array.of(v, v, v + 1, v + 1));
      step.store(0, 'values', new Float32Array(4));
      step.commit();
      return past;
    };
    const first = decode(7);
    expect(decode(8)).toBe(first); // same sequences, same P: the same buffer, updated in place
    expect(Array.from(first.subarray(3 * 2, 5 * 2))).toEqual([7, 7, 0, 0]); // entry 0's slot from step 7 (step 8's lands at commit)
    while (grower.capacity === 64) expect(decode(9)).toBe(first); // entry 1 fills its 64-slot buffer…
    expect(decode(9)).not.toBe(first); // …and grows it: P changes, rebuilt
    while (grower.length < 70 + 64) decode(9); // past the window's slack: compacted, rebuilt
    expect(grower.entries).toBeLessThan(70);
    decode(10);
    caches.reverse();
    decode(11); // another order: rebuilt (checked against a fresh step inside)
  });

  it('changes nothing until commit, so a step that fails half-way leaves the sequence intact', () => {
    const cache = new SequenceCache(1, shape(null));
    const step = new BatchStep([{ cache, tokens: [1] }], shape(null));
    step.store(0, 'keys', Float32Array.of(1, 2));
    expect([cache.length, cache.entries, keysOf(cache).length]).toEqual([0, 0, 0]);
  });

  it('grows by a quarter (in 64-slot steps) and keeps the valid entries of every head', () => {
    const cache = new SequenceCache(1, { ...shape(null), kvHeads: 2 });
    const first = new BatchStep([{ cache, tokens: new Array(64).fill(1) }], cache.shape);
    first.store(
      0,
      'keys',
      Float32Array.from({ length: 2 * 64 * 2 }, (_, i) => i),
    );
    first.store(0, 'values', new Float32Array(256));
    first.commit();
    cache.reserve(65);
    expect(cache.capacity).toBe(128);
    expect(Array.from(keysOf(cache).subarray(128 * 2, 128 * 2 + 2))).toEqual([128, 129]); // head 1 starts at slot 0 of its row
    cache.reserve(129);
    expect(cache.capacity).toBe(192);
  });

  it('compacts a sliding-window cache to the last W-1 entries once it grows past the slack', () => {
    const cache = new SequenceCache(1, shape(4));
    const step = new BatchStep([{ cache, tokens: Array.from({ length: 100 }, () => 1) }], shape(4));
    step.store(
      0,
      'keys',
      Float32Array.from({ length: 200 }, (_, i) => i),
    );
    step.store(0, 'values', new Float32Array(200));
    step.commit();
    expect([cache.length, cache.entries]).toEqual([100, 3]);
    expect(Array.from(keysOf(cache).subarray(0, 8))).toEqual([194, 195, 196, 197, 198, 199, 0, 0]);
  });
});

describe('recycled buffers', () => {
  it('hand an outgrown or released buffer to the next cache of that size, zeroed', () => {
    const pool = new KvBufferPool();
    const buffersOf = (cache: SequenceCache) => new Set([...cache.keys, ...cache.values].map((b) => b.buffer));
    const first = new SequenceCache(1, shape(null), pool);
    first.reserve(1); // 64 slots
    keysOf(first).fill(7);
    const outgrown = buffersOf(first);
    const bytes = keysOf(first).byteLength;
    first.reserve(65); // 128 slots: the 64-slot buffers go to the pool
    expect(pool.bytes).toBe(2 * bytes);
    const second = new SequenceCache(2, shape(null), pool);
    second.reserve(1);
    expect(buffersOf(second)).toEqual(outgrown);
    expect([...second.keys, ...second.values].every((buffer) => buffer.every((v) => v === 0))).toBe(true);
    expect(pool.bytes).toBe(0);

    const grown = buffersOf(first);
    first.release();
    const third = new SequenceCache(3, shape(null), pool);
    third.reserve(100); // 128 slots, like `first` had
    expect(buffersOf(third)).toEqual(grown);
  });

  it('serve the batched past across rebuilds without changing what a step reads', () => {
    const pool = new KvBufferPool();
    const past = new BatchedPast(shape(null), pool);
    const a = prefilled(3, null);
    const b = prefilled(5, null);
    keysOf(a).fill(1, 0, 6);
    keysOf(b).fill(2, 0, 10);
    const stepOf = (order: SequenceCache[]) =>
      new BatchStep(
        order.map((cache) => ({ cache, tokens: [1] })),
        shape(null),
        past,
      );
    const first = stepOf([a, b]);
    const firstBuffers = [first.pastTensor(0, 'keys').buffer, first.pastTensor(0, 'values').buffer];
    const snapshot = Array.from(first.pastTensor(0, 'keys'));
    // The same sequences in the other order: a rebuild, into the buffers the first layout used.
    const swapped = stepOf([b, a]).pastTensor(0, 'keys');
    expect(firstBuffers).toContain(swapped.buffer);
    const half = snapshot.length / 2;
    expect(Array.from(swapped)).toEqual([...snapshot.slice(half), ...snapshot.slice(0, half)]);
  });

  it('serve sequences and the batched past from memory reserved up front without changing what a step reads', () => {
    const steps = (pool: KvBufferPool) => {
      const past = new BatchedPast(shape(null), pool);
      const caches = [new SequenceCache(1, shape(null), pool), new SequenceCache(2, shape(null), pool)];
      const seen: number[][] = [];
      for (let i = 0; i < 70; i++) {
        const step = new BatchStep(
          caches.map((cache) => ({ cache, tokens: [1] })),
          shape(null),
          past,
        );
        seen.push(Array.from(step.pastTensor(0, 'keys')));
        step.store(
          0,
          'keys',
          Float32Array.from({ length: 4 }, (_, j) => i * 10 + j),
        );
        step.store(0, 'values', new Float32Array(4));
        step.commit(); // crosses the 64-slot capacity step at i = 64
      }
      return seen;
    };
    const reserved = new KvBufferPool({ reserveBytes: 2 ** 20 });
    expect(steps(reserved)).toEqual(steps(new KvBufferPool()));
    expect(reserved.reserve.inUse).toBeGreaterThan(0);
  });
});
