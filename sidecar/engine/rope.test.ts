import { describe, expect, it } from 'vitest';
import { RopeTable } from './rope.ts';

describe('the RoPE table', () => {
  it('holds cos and sin of position × θ^(−2i/head_dim), one row per position', () => {
    const table = new RopeTable(4, 10000);
    const { cos, sin } = table.upTo(3);
    expect(cos.length).toBe(3 * 2);
    for (let position = 0; position < 3; position++) {
      for (let i = 0; i < 2; i++) {
        const angle = position * 10000 ** ((-2 * i) / 4);
        expect(cos[position * 2 + i]).toBe(Math.fround(Math.cos(angle)));
        expect(sin[position * 2 + i]).toBe(Math.fround(Math.sin(angle)));
      }
    }
  });

  it('grows on demand and keeps the rows it had', () => {
    const table = new RopeTable(2, 10000);
    const first = Array.from(table.upTo(2).cos);
    const grown = table.upTo(1000);
    expect(grown.cos.length).toBe(1000);
    expect(Array.from(grown.cos.subarray(0, 2))).toEqual(first);
    // head_dim 2: one frequency, θ^0 = 1, so the angle is the position itself.
    expect(grown.sin[999]).toBe(Math.fround(Math.sin(999)));
  });
});
