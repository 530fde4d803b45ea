/**
 * Q4_0 and Q8_0 blocks: the same bytes llama.cpp writes for the same fp32 weights (checked on
 * the golden Mixtral's expert tensors as GGUF files hold them), the values they stand for, and
 * fp16 scales rounded as the hardware rounds them.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gguf } from '@huggingface/gguf';
import { describe, expect, it } from 'vitest';
import {
  BLOCK,
  BLOCK_BYTES,
  blockMatrixBytes,
  deinterleaveQ4_0Rows,
  dequantizeBlocks,
  fromFloat16Bits,
  interleaveQ4_0Rows,
  interleaveQ8_0Rows,
  Q4_0X4_GROUP_BYTES,
  quantizeBlocks,
  toFloat16Bits,
} from './blocks.ts';
import { Checkpoint } from './checkpoint.ts';

const FIXTURES = join(import.meta.dirname, '../../test/fixtures/golden');

describe('fp16 scales', () => {
  it('round to nearest even, keep subnormals, overflow to infinity', () => {
    expect(toFloat16Bits(1)).toBe(0x3c00);
    expect(toFloat16Bits(-2)).toBe(0xc000);
    expect(toFloat16Bits(65504)).toBe(0x7bff);
    expect(toFloat16Bits(65520)).toBe(0x7c00); // halfway to the next power: rounds up to inf
    expect(toFloat16Bits(1 + 2 ** -11)).toBe(0x3c00); // a tie rounds to the even mantissa
    expect(toFloat16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(toFloat16Bits(2 ** -24)).toBe(0x0001);
    expect(toFloat16Bits(2 ** -26)).toBe(0x0000);
    expect(toFloat16Bits(0)).toBe(0);
    for (const bits of [0x0001, 0x03ff, 0x0400, 0x3555, 0x7bff, 0x8001, 0xbc00]) expect(toFloat16Bits(fromFloat16Bits(bits))).toBe(bits);
  });
});

describe('block quantisation', () => {
  it('is byte-identical to llama.cpp on every expert matrix of the golden Mixtral (Q4_0 and Q8_0 GGUF files)', async () => {
    const checkpoint = await Checkpoint.open(join(FIXTURES, 'tiny-mixtral/native'));
    try {
      for (const format of ['q4_0', 'q8_0'] as const) {
        const path = join(FIXTURES, `gguf/tiny-mixtral/${format}.gguf`);
        const { tensorInfos, tensorDataOffset } = await gguf(path, { allowLocalFile: true });
        const file = await readFile(path);
        let compared = 0;
        for (const info of tensorInfos) {
          const match = /^blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight$/.exec(info.name);
          if (!match) continue;
          const [cols, rows, experts] = info.shape.map(Number) as [number, number, number];
          const bytes = blockMatrixBytes(format, rows, cols);
          const name = { gate: 'w1', up: 'w3', down: 'w2' }[match[2] as 'gate' | 'up' | 'down'];
          for (let expert = 0; expert < experts; expert++) {
            const weights = await checkpoint.read(`layers.${match[1]}.feed_forward.experts.${expert}.${name}.weight`);
            const ours = new Uint8Array(bytes);
            quantizeBlocks(format, weights, rows, cols, ours);
            const start = Number(tensorDataOffset + info.offset) + expert * bytes;
            expect(Buffer.from(ours).equals(file.subarray(start, start + bytes)), `${info.name} expert ${expert}`).toBe(true);
            compared++;
          }
        }
        expect(compared).toBe(2 * 3 * 8); // layers × matrices × experts
      }
    } finally {
      await checkpoint.close();
    }
  });

  it('stands for values within half a step of the weights (Q4_0: a full step where the positive end is clamped at 7)', () => {
    const rows = 3;
    const cols = 4 * BLOCK;
    const values = Float32Array.from({ length: rows * cols }, (_, i) => Math.sin(i * 1.7) * (1 + (i % 7)));
    for (const format of ['q4_0', 'q8_0'] as const) {
      const bytes = new Uint8Array(blockMatrixBytes(format, rows, cols));
      expect(quantizeBlocks(format, values, rows, cols, bytes)).toBe(bytes.length);
      const back = dequantizeBlocks(format, bytes, rows, cols);
      for (let block = 0; block < (rows * cols) / BLOCK; block++) {
        const at = block * BLOCK_BYTES[format];
        const step = Math.abs(fromFloat16Bits(bytes[at]! | (bytes[at + 1]! << 8)));
        for (let j = 0; j < BLOCK; j++) {
          const i = block * BLOCK + j;
          const limit = format === 'q4_0' ? step : step / 2;
          // fp16 rounding of the scale moves a reconstructed value by ≤ 2^-11 of it.
          expect(Math.abs(back[i]! - values[i]!)).toBeLessThanOrEqual(limit * 1.002 + Math.abs(values[i]!) * 2 ** -10);
        }
      }
    }
  });

  it('refuses rows that blocks of 32 do not divide, and writes a zero block for zero weights', () => {
    expect(() => quantizeBlocks('q4_0', new Float32Array(48), 1, 48, new Uint8Array(64))).toThrow(/multiple of 32/);
    const zero = new Uint8Array(BLOCK_BYTES.q4_0);
    quantizeBlocks('q4_0', new Float32Array(BLOCK), 1, BLOCK, zero);
    expect(dequantizeBlocks('q4_0', zero, 1, BLOCK).every((value) => value === 0)).toBe(true);
  });
});

describe('Q4_0 rows interleaved four at a time, in bands of 16 rows', () => {
  // One whole band (rows 0–15) and a short one of two groups (rows 16–23).
  const rows = 24;
  const cols = 3 * BLOCK;
  const blocks = Uint8Array.from({ length: blockMatrixBytes('q4_0', rows, cols) }, (_, i) => (i * 37 + 11) & 0xff);

  it('keeps every block and its bits: de-interleaving gives GGUF order back', () => {
    const interleaved = interleaveQ4_0Rows(blocks, rows, cols);
    expect(interleaved).not.toEqual(blocks);
    expect(deinterleaveQ4_0Rows(interleaved, rows, cols)).toEqual(blocks);
  });

  it("puts four rows' scales first, then slices of four bytes from each row; a band's groups alternate by block column", () => {
    const interleaved = interleaveQ4_0Rows(blocks, rows, cols);
    const nb = cols / BLOCK;
    const blockOf = (row: number, b: number) => blocks.subarray((row * nb + b) * 18, (row * nb + b + 1) * 18);
    const groupBlock = (at: number) => interleaved.subarray(at * Q4_0X4_GROUP_BYTES, (at + 1) * Q4_0X4_GROUP_BYTES);
    for (const { firstRow, at } of [
      // Rows 4–7 (the first band's second group), block column 2: after columns 0 and 1 of all four groups.
      { firstRow: 4, at: 2 * 4 + 1 },
      // Rows 20–23 (the short band's second group), block column 2: after the first band, then two columns of two groups.
      { firstRow: 20, at: 4 * nb + 2 * 2 + 1 },
    ]) {
      const group = groupBlock(at);
      for (let lane = 0; lane < 4; lane++) {
        const block = blockOf(firstRow + lane, 2);
        expect(Array.from(group.subarray(2 * lane, 2 * lane + 2))).toEqual(Array.from(block.subarray(0, 2)));
        for (let k = 0; k < 4; k++) {
          const slice = group.subarray(8 + 16 * k + 4 * lane, 8 + 16 * k + 4 * lane + 4);
          expect(Array.from(slice)).toEqual(Array.from(block.subarray(2 + 4 * k, 6 + 4 * k)));
        }
      }
    }
  });

  it('refuses shapes it cannot interleave', () => {
    expect(() => interleaveQ4_0Rows(new Uint8Array(blockMatrixBytes('q4_0', 6, 32)), 6, 32)).toThrow(/multiple of 4/);
    expect(() => interleaveQ4_0Rows(new Uint8Array(10), 4, 32)).toThrow(/bytes/);
  });
});

describe('Q8_0 rows interleaved four at a time', () => {
  const rows = 8;
  const cols = 3 * BLOCK;
  const blocks = Uint8Array.from({ length: blockMatrixBytes('q8_0', rows, cols) }, (_, i) => (i * 37 + 11) & 0xff);

  it("puts four rows' scales first, then each row's 32 quants, block column after block column", () => {
    const interleaved = interleaveQ8_0Rows(blocks, rows, cols);
    const nb = cols / BLOCK;
    for (let row = 0; row < rows; row++) {
      for (let b = 0; b < nb; b++) {
        const block = blocks.subarray((row * nb + b) * 34, (row * nb + b + 1) * 34);
        // Group (rows 4g … 4g+3) g, block column b: 136 bytes at (g·nb + b)·136.
        const group = interleaved.subarray((Math.floor(row / 4) * nb + b) * 136, (Math.floor(row / 4) * nb + b + 1) * 136);
        const lane = row % 4;
        expect(Array.from(group.subarray(2 * lane, 2 * lane + 2))).toEqual(Array.from(block.subarray(0, 2)));
        expect(Array.from(group.subarray(8 + 32 * lane, 8 + 32 * (lane + 1)))).toEqual(Array.from(block.subarray(2)));
      }
    }
  });

  it('refuses shapes it cannot interleave', () => {
    expect(() => interleaveQ8_0Rows(new Uint8Array(blockMatrixBytes('q8_0', 6, 32)), 6, 32)).toThrow(/multiple of 4/);
    expect(() => interleaveQ8_0Rows(new Uint8Array(10), 4, 32)).toThrow(/bytes/);
  });
});
