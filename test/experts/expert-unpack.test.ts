/**
 * int4 → int8 widening of paged experts (sidecar/expert-unpack.ts): a byte holds two signed
 * nibbles; row bytes [lo…] then [hi…] come out as 16·q. The WebAssembly SIMD kernel must agree
 * byte for byte with the plain-JS reference on every shape, including the ones it hands to the
 * scalar path, and must not clobber earlier outputs of the same call.
 */
import { randomFillSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Int4Arenas, Int4Unpacker, unpackInt4Scalar, type PackedInt4Matrix } from '../../sidecar/expert-unpack.ts';

function randomMatrix(rows: number, rowBytes: number): PackedInt4Matrix {
  return { packed: randomFillSync(new Uint8Array(rows * rowBytes)), rows, rowBytes };
}

function reference(matrix: PackedInt4Matrix): Int8Array {
  const out = new Int8Array(2 * matrix.rows * matrix.rowBytes);
  unpackInt4Scalar(matrix, out);
  return out;
}

const same = (a: Int8Array, b: Int8Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

/** Sign-extends a 4-bit two's-complement value. */
const signed = (nibble: number) => (nibble >= 8 ? nibble - 16 : nibble);

describe('int4 unpacking', () => {
  it('widens each nibble to 16·q of its sign-extended value: lo nibbles first, hi nibbles half a row later', () => {
    const bytes = [0x00, 0x7f, 0x88, 0xf1, 0x19, 0x97, 0x0f, 0xe2];
    // lo: 0, -1, -8, 1, -7, 7, -1, 2   hi: 0, 7, -8, -1, 1, -7, 0, -2
    const expected = [0, -16, -128, 16, -112, 112, -16, 32, /* hi */ 0, 112, -128, -16, 16, -112, 0, -32];
    const scalar = new Int8Array(16);
    unpackInt4Scalar({ packed: Uint8Array.from(bytes), rows: 1, rowBytes: 8 }, scalar);
    expect(Array.from(scalar)).toEqual(expected);
    // The same bytes through the SIMD kernel (a 16-byte row: the bytes twice).
    const [simd] = new Int4Unpacker(32).unpack([{ packed: Uint8Array.from([...bytes, ...bytes]), rows: 1, rowBytes: 16 }]);
    expect(Array.from(simd!)).toEqual([...expected.slice(0, 8), ...expected.slice(0, 8), ...expected.slice(8), ...expected.slice(8)]);
  });

  it('agrees with the definition on every byte value', () => {
    const packed = Uint8Array.from({ length: 256 }, (_, i) => i);
    const [out] = new Int4Unpacker(512).unpack([{ packed, rows: 1, rowBytes: 256 }]);
    for (let byte = 0; byte < 256; byte++) {
      expect([out![byte], out![256 + byte]], `byte 0x${byte.toString(16)}`).toEqual([16 * signed(byte & 0x0f), 16 * signed(byte >> 4)]);
    }
  });

  // [rows, rowBytes]: SIMD widths (the paged shapes 64×160 and 160×32 among them), rows spanning
  // several 1 MiB staging chunks, and widths that are not a multiple of 16 (the scalar path).
  const shapes: Array<[number, number]> = [[1, 16], [64, 160], [160, 32], [3, 4096], [300, 4096], [5, 7], [64, 33], [2, 1]];
  for (const [rows, rowBytes] of shapes) {
    it(`matches the scalar reference for ${rows} × ${rowBytes} random packed bytes`, () => {
      const matrix = randomMatrix(rows, rowBytes);
      const [out] = new Int4Unpacker(2 * rows * rowBytes).unpack([matrix]);
      expect(out!.length).toBe(2 * rows * rowBytes);
      expect(same(out!, reference(matrix))).toBe(true);
    });
  }

  it('widens several matrices in one call into separate views, none overwriting another', () => {
    // An expert's two matrices (w13 then w2), then a scalar-path one and a multi-chunk one.
    const matrices = [randomMatrix(64, 160), randomMatrix(160, 32), randomMatrix(9, 21), randomMatrix(600, 2048)];
    const total = matrices.reduce((sum, m) => sum + 2 * m.rows * m.rowBytes, 0);
    const views = new Int4Unpacker(total).unpack(matrices);
    expect(views).toHaveLength(4);
    views.forEach((view, i) => {
      expect(view.length, `view ${i}`).toBe(2 * matrices[i]!.rows * matrices[i]!.rowBytes);
      expect(same(view, reference(matrices[i]!)), `view ${i}`).toBe(true);
    });
    // Consecutive, non-overlapping windows of one scratch.
    for (let i = 1; i < views.length; i++) {
      expect(views[i]!.buffer).toBe(views[0]!.buffer);
      expect(views[i]!.byteOffset).toBe(views[i - 1]!.byteOffset + views[i - 1]!.byteLength);
    }
  });

  it('reuses its scratch: a second call gives correct views for the new matrices', () => {
    const unpacker = new Int4Unpacker(2 * 64 * 160 + 2 * 160 * 32);
    const first = [randomMatrix(64, 160), randomMatrix(160, 32)];
    const firstViews = unpacker.unpack(first).map((view) => view.slice());
    const second = [randomMatrix(64, 160), randomMatrix(160, 32)];
    const secondViews = unpacker.unpack(second);
    firstViews.forEach((view, i) => expect(same(view, reference(first[i]!))).toBe(true));
    secondViews.forEach((view, i) => expect(same(view, reference(second[i]!))).toBe(true));
  });

  it('throws a RangeError when the output would not fit its scratch, and accepts an exact fit', () => {
    const unpacker = new Int4Unpacker(2 * 64 * 160);
    expect(() => unpacker.unpack([randomMatrix(64, 160), randomMatrix(1, 16)])).toThrow(RangeError);
    expect(() => unpacker.unpack([randomMatrix(65, 160)])).toThrow(/unpacking 20800 bytes into a 20480-byte scratch/);
    expect(() => unpacker.unpack([randomMatrix(64, 160)])).not.toThrow();
  });

  it('throws a RangeError for a packed buffer that does not match rows × rowBytes', () => {
    const unpacker = new Int4Unpacker(4096);
    expect(() => unpacker.unpack([{ packed: new Uint8Array(100), rows: 4, rowBytes: 32 }])).toThrow(RangeError);
  });
});

describe('Int4Unpacker slots: page-in buffers inside its memory, widened in place', () => {
  const slotBytes = 64 * 160 + 160 * 32 + 40; // an expert image: packed matrices plus some header bytes

  it('hands out aligned slots until none is left, and takes them back', () => {
    const unpacker = new Int4Unpacker(2 * (64 * 160 + 160 * 32), { bytes: slotBytes, count: 3 });
    const slots = [unpacker.allocateSlot(), unpacker.allocateSlot(), unpacker.allocateSlot()];
    expect(slots.every((slot) => slot !== null && slot.byteLength === slotBytes && slot.byteOffset % 64 === 0 && unpacker.owns(slot))).toBe(true);
    expect(new Set(slots.map((slot) => slot!.byteOffset)).size).toBe(3);
    expect(unpacker.allocateSlot()).toBeNull();
    unpacker.releaseSlot(slots[1]!);
    expect(unpacker.allocateSlot()!.byteOffset).toBe(slots[1]!.byteOffset);
    expect(unpacker.owns(new Uint8Array(slotBytes))).toBe(false);
    expect(() => unpacker.releaseSlot(new Uint8Array(slotBytes))).toThrow(RangeError);
  });

  it('widens matrices that live in its slots in place, exactly like the scalar reference', () => {
    const unpacker = new Int4Unpacker(2 * (64 * 160 + 160 * 32), { bytes: slotBytes, count: 2 });
    const slot = unpacker.allocateSlot()!;
    randomFillSync(slot);
    const before = slot.slice();
    const matrices = [
      { packed: slot.subarray(40, 40 + 64 * 160), rows: 64, rowBytes: 160 },
      { packed: slot.subarray(40 + 64 * 160, 40 + 64 * 160 + 160 * 32), rows: 160, rowBytes: 32 },
    ];
    const views = unpacker.unpack(matrices);
    views.forEach((view, i) => expect(same(view, reference(matrices[i]!))).toBe(true));
    // The packed bytes (the cached expert) are untouched by widening.
    expect(Buffer.from(slot).equals(Buffer.from(before))).toBe(true);
  });

  it('says how many slots fit in one wasm32 memory beside the scratch', () => {
    const mixtralExpert = 64 + 4 * (2 * 14336 + 4096) + (3 * 4096 * 14336) / 2; // int4 file image
    const fit = Int4Unpacker.slotsThatFit(3 * 4096 * 14336, mixtralExpert);
    expect(fit).toBe(46); // (4 GiB − 64 KiB − 1 MiB − 168 MiB) / 84.1 MiB
    expect(() => new Int4Unpacker(16, { bytes: 2 ** 31, count: 2 })).toThrow(/exceeds a wasm32 memory/);
  });
});

describe('Int4Arenas: the expert cache buffers of int4 stores', () => {
  const outputBytes = 2 * (64 * 160 + 160 * 32);
  const bufferBytes = 64 * 160 + 160 * 32;
  const asMatrices = (buffer: Uint8Array): PackedInt4Matrix[] => [
    { packed: buffer.subarray(0, 64 * 160), rows: 64, rowBytes: 160 },
    { packed: buffer.subarray(64 * 160), rows: 160, rowBytes: 32 },
  ];

  it('places the expected number of buffers in arenas, then falls back to plain buffers that still widen correctly', async () => {
    const arenas = new Int4Arenas(outputBytes, bufferBytes, 3);
    const buffers = Array.from({ length: 4 }, () => arenas.allocate());
    expect(buffers.slice(0, 3).every((b) => b.buffer === buffers[0]!.buffer)).toBe(true);
    expect(buffers[3]!.buffer).not.toBe(buffers[0]!.buffer);
    for (const buffer of buffers) {
      randomFillSync(buffer);
      const matrices = asMatrices(buffer);
      const widened = await arenas.withWidened(matrices, async (views) => views.map((v) => v.slice()));
      widened.forEach((view, i) => expect(same(view, reference(matrices[i]!))).toBe(true));
    }
    // A released arena buffer is handed out again.
    arenas.release(buffers[1]!);
    expect(arenas.allocate().byteOffset).toBe(buffers[1]!.byteOffset);
  });

  it('gives overlapping runs separate scratches, so neither sees the other expert', async () => {
    const arenas = new Int4Arenas(outputBytes, bufferBytes, 2);
    const [a, b] = [arenas.allocate(), arenas.allocate()];
    randomFillSync(a);
    randomFillSync(b);
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const first = arenas.withWidened(asMatrices(a), async (views) => {
      await held; // still running while the second expert widens
      return views.map((v) => v.slice());
    });
    const second = await arenas.withWidened(asMatrices(b), async (views) => views.map((v) => v.slice()));
    release();
    (await first).forEach((view, i) => expect(same(view, reference(asMatrices(a)[i]!))).toBe(true));
    second.forEach((view, i) => expect(same(view, reference(asMatrices(b)[i]!))).toBe(true));
  });
});
