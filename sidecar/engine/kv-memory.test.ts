/**
 * The KV caches' memory: buffers handed out zeroed and taken back, carved from memory reserved at
 * load when there is a reserve, else allocated and recycled by length.
 */
import { describe, expect, it } from 'vitest';
import { autoKvReserveBytes, KvBufferPool, kvBytesPerToken } from './kv-memory.ts';

const MiB = 2 ** 20;

describe('recycled buffers without a reserve', () => {
  it('keep at most their limit', () => {
    const pool = new KvBufferPool({ keepBytes: 1024 });
    pool.give(new Float32Array(200)); // 800 bytes
    pool.give(new Float32Array(200)); // would pass 1024: dropped
    expect(pool.bytes).toBe(800);
    expect(pool.take(200).length).toBe(200);
    expect(pool.bytes).toBe(0);
  });
});

describe('memory reserved up front', () => {
  it('carve every buffer from the reserve, zeroed, and take them back for any later size', () => {
    const pool = new KvBufferPool({ reserveBytes: MiB });
    expect(pool.reserve).toEqual({ bytes: MiB, inUse: 0 });
    const a = pool.take(1000);
    const b = pool.take(3000);
    a.fill(5);
    b.fill(6);
    expect(a.buffer).toBe(b.buffer);
    expect(b.byteOffset).toBeGreaterThanOrEqual(a.byteOffset + a.byteLength);
    expect(b.byteOffset % 64).toBe(0);
    expect(pool.reserve.inUse).toBe(4 * (1008 + 3008)); // rounded to 64-byte lines
    pool.give(a);
    pool.give(b);
    expect(pool.reserve.inUse).toBe(0);
    expect(pool.bytes).toBe(0); // back in the reserve, not kept by length
    // The two returned ranges merged: a buffer larger than either fits where they were, zeroed.
    const c = pool.take(4000);
    expect(c.byteOffset).toBe(a.byteOffset);
    expect(c.every((v) => v === 0)).toBe(true);
  });

  it('merge a returned buffer with free neighbours on both sides', () => {
    const pool = new KvBufferPool({ reserveBytes: 64 * 1024 }); // 16,384 floats
    const [a, b, c, d] = [pool.take(4096), pool.take(4096), pool.take(4096), pool.take(4096)];
    expect(new Set([a, b, c, d].map((buffer) => buffer.buffer)).size).toBe(1);
    expect(pool.take(16).buffer).not.toBe(a.buffer); // full: a new allocation
    pool.give(a);
    pool.give(c);
    pool.give(b); // joins a's and c's ranges into one
    expect(pool.take(3 * 4096).byteOffset).toBe(a.byteOffset);
    expect(pool.reserve.inUse).toBe(pool.reserve.bytes);
  });

  it('fall back to new buffers beyond the reserve and keep those by length as before', () => {
    const pool = new KvBufferPool({ reserveBytes: 64 * 1024, keepBytes: MiB });
    const big = pool.take(32 * 1024); // larger than the whole reserve
    expect(big.byteOffset).toBe(0);
    expect(big.buffer.byteLength).toBe(big.byteLength);
    pool.give(big);
    expect(pool.bytes).toBe(big.byteLength);
    expect(pool.take(32 * 1024).buffer).toBe(big.buffer);
    // A reserve buffer returned twice (or a view into one) is ignored: never kept by length,
    // where a later take would hand out memory the reserve hands out too.
    const small = pool.take(64);
    pool.give(small);
    pool.give(small);
    pool.give(small.subarray(0, 32));
    expect(pool.reserve.inUse).toBe(0);
    expect(pool.bytes).toBe(0);
    // An empty buffer (a batch's past before any sequence has a slot) holds no reserve memory, so
    // returning it cannot free the range of the next buffer placed at the same offset.
    const empty = pool.take(0);
    const next = pool.take(64);
    pool.give(empty);
    expect(pool.reserve.inUse).toBe(256);
    expect(pool.take(64).byteOffset).not.toBe(next.byteOffset);
  });
});

describe('the automatic reserve', () => {
  it('holds each sequence’s cache of 256 tokens twice over, at most 1 GiB', () => {
    const bench1b = { layers: 16, kvHeads: 4, headDim: 128 };
    expect(kvBytesPerToken(bench1b)).toBe(64 * 1024);
    expect(autoKvReserveBytes(bench1b, 16)).toBe(512 * MiB);
    expect(autoKvReserveBytes({ layers: 32, kvHeads: 8, headDim: 128 }, 16)).toBe(1024 * MiB); // 7B: capped
  });
});
