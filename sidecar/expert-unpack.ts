/**
 * int4 → int8 expert unpacking, just before an expert runs.
 *
 * Paged int4 experts stay packed in the cache (half the bytes of int8, so twice the experts per
 * budget) and are widened into one reusable int8 scratch right before their run, because
 * onnxruntime 1.30 has no fast kernel that takes int4 weights as graph inputs (expert-graph.ts).
 *
 * The packing makes the widening two bit operations per byte. A byte holds two signed nibbles
 * (two's complement, q ∈ [-7, 7]) of the same row, for two columns half a row apart:
 *   lo nibble → column c          int8 = byte << 4      = 16·q_lo
 *   hi nibble → column c + N/2    int8 = byte & 0xF0    = 16·q_hi
 * The stored scales are already divided by 16, so 16·q × scale/16 is the weight, and the int8
 * rows come out in exactly the layout of the int8 expert format (expert-store.ts).
 *
 * The kernel is a few dozen bytes of hand-assembled WebAssembly SIMD (Node ≥ 16.4 runs it unflagged):
 * ~3–4× faster than the best plain-JS loop, measured 0.77 ms vs 1.9 ms for a 5.5 MB expert and
 * 25 ms vs 31 ms for a Mixtral-sized one (memory-bound there). Packed rows are copied into the
 * module's memory a chunk at a time; the int8 output lives there and the onnxruntime tensors
 * wrap it without a copy.
 */

/** One expert's weights, packed int4 (see the module comment). */
export interface PackedInt4Matrix {
  /** [rows, rowBytes]: rowBytes packed bytes per row → 2·rowBytes int8 columns. */
  packed: Uint8Array;
  rows: number;
  rowBytes: number;
}

const CHUNK_BYTES = 1 << 20;
const PAGE = 65536;
const SIMD_WIDTH = 16;

// --- the WebAssembly kernel -------------------------------------------------------------------
// unpack(src, dst, rows, rowBytes): for each row, for each 16-byte vector v at src:
//   dst[i] = i8x16.shl(v, 4);  dst[rowBytes + i] = v128.and(v, 0xF0 × 16)
// then src += rowBytes, dst += 2·rowBytes. rowBytes must be a multiple of 16 and rows ≥ 1.
const leb = (n: number): number[] => {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n) byte |= 0x80;
    out.push(byte);
  } while (n);
  return out;
};
const name = (s: string): number[] => [...leb(s.length), ...Buffer.from(s, 'latin1')];
const section = (id: number, body: number[]): number[] => [id, ...leb(body.length), ...body];
const op = { block: 0x02, loop: 0x03, brIf: 0x0d, end: 0x0b, get: 0x20, set: 0x21, tee: 0x22, i32: 0x41, eqz: 0x45, ltU: 0x49, add: 0x6a, sub: 0x6b } as const;
const simd = (code: number, ...immediates: number[]): number[] => [0xfd, ...leb(code), ...immediates];
const MEMARG = [0x00, 0x00]; // alignment 1 byte, offset 0
const V128_LOAD = 0x00;
const V128_STORE = 0x0b;
const V128_CONST = 0x0c;
const V128_AND = 0x4e;
const I8X16_SHL = 0x6b;
// locals: 0 src, 1 dst, 2 rows, 3 rowBytes (params); 4 rowEnd, 5 hiDst
const KERNEL_BODY = [
  1, 2, 0x7f,
  op.block, 0x40,
  op.get, 2, op.eqz, op.brIf, 0,
  op.loop, 0x40,
  op.get, 0, op.get, 3, op.add, op.set, 4,
  op.get, 1, op.get, 3, op.add, op.set, 5,
  op.loop, 0x40,
  op.get, 1, op.get, 0, ...simd(V128_LOAD, ...MEMARG), op.i32, 4, ...simd(I8X16_SHL), ...simd(V128_STORE, ...MEMARG),
  op.get, 5, op.get, 0, ...simd(V128_LOAD, ...MEMARG), ...simd(V128_CONST, ...new Array<number>(16).fill(0xf0)), ...simd(V128_AND), ...simd(V128_STORE, ...MEMARG),
  op.get, 0, op.i32, SIMD_WIDTH, op.add, op.set, 0,
  op.get, 1, op.i32, SIMD_WIDTH, op.add, op.set, 1,
  op.get, 5, op.i32, SIMD_WIDTH, op.add, op.set, 5,
  op.get, 0, op.get, 4, op.ltU, op.brIf, 0,
  op.end,
  op.get, 5, op.set, 1,
  op.get, 2, op.i32, 1, op.sub, op.tee, 2, op.brIf, 0,
  op.end,
  op.end,
  op.end,
];
const I32 = 0x7f;
const KERNEL_MODULE = new WebAssembly.Module(
  Uint8Array.from([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, [1, 0x60, 4, I32, I32, I32, I32, 0]), // type: (i32 i32 i32 i32) → ()
    ...section(2, [1, ...name('env'), ...name('memory'), 0x02, 0x00, 0x01]), // import memory (min 1 page)
    ...section(3, [1, 0]),
    ...section(7, [1, ...name('unpack'), 0x00, 0]),
    ...section(10, [1, ...leb(KERNEL_BODY.length), ...KERNEL_BODY]),
  ]),
);

/** The reference (and tail) path: the same widening in plain JS, one row. */
function unpackRowScalar(src: Uint8Array, srcOffset: number, dst: Int8Array, dstOffset: number, rowBytes: number): void {
  for (let i = 0; i < rowBytes; i++) {
    const byte = src[srcOffset + i]!;
    dst[dstOffset + i] = (byte << 28) >> 24; // sign-extended lo nibble × 16
    dst[dstOffset + rowBytes + i] = ((byte << 24) >> 28) << 4; // sign-extended hi nibble × 16
  }
}

/** Widens `matrix` into `out` ([rows, 2·rowBytes] int8) in plain JS. */
export function unpackInt4Scalar(matrix: PackedInt4Matrix, out: Int8Array): void {
  for (let r = 0; r < matrix.rows; r++) unpackRowScalar(matrix.packed, r * matrix.rowBytes, out, 2 * r * matrix.rowBytes, matrix.rowBytes);
}

/**
 * Widens packed int4 matrices into int8 views of one scratch area. The views returned by
 * `unpack` stay valid until the next call: one expert runs at a time per unpacker.
 */
export class Int4Unpacker {
  private readonly memory: WebAssembly.Memory;
  private readonly kernel: (src: number, dst: number, rows: number, rowBytes: number) => void;
  private readonly heap: Uint8Array;

  /** @param outputBytes the largest total int8 output of one `unpack` call */
  constructor(readonly outputBytes: number) {
    const pages = Math.ceil((CHUNK_BYTES + outputBytes) / PAGE);
    this.memory = new WebAssembly.Memory({ initial: pages, maximum: pages });
    const instance = new WebAssembly.Instance(KERNEL_MODULE, { env: { memory: this.memory } });
    this.kernel = instance.exports.unpack as (src: number, dst: number, rows: number, rowBytes: number) => void;
    this.heap = new Uint8Array(this.memory.buffer);
  }

  /** Widens each matrix in turn; returns one int8 view per matrix, [rows, 2·rowBytes] each. */
  unpack(matrices: PackedInt4Matrix[]): Int8Array[] {
    const total = matrices.reduce((sum, m) => sum + 2 * m.rows * m.rowBytes, 0);
    if (total > this.outputBytes) throw new RangeError(`unpacking ${total} bytes into a ${this.outputBytes}-byte scratch`);
    const views: Int8Array[] = [];
    let dst = CHUNK_BYTES;
    for (const matrix of matrices) {
      const { packed, rows, rowBytes } = matrix;
      if (packed.byteLength !== rows * rowBytes) throw new RangeError(`packed matrix has ${packed.byteLength} bytes, expected ${rows}×${rowBytes}`);
      const view = new Int8Array(this.memory.buffer, dst, 2 * rows * rowBytes);
      if (rowBytes % SIMD_WIDTH !== 0 || rowBytes > CHUNK_BYTES) {
        unpackInt4Scalar(matrix, view);
      } else {
        const rowsPerChunk = Math.floor(CHUNK_BYTES / rowBytes);
        for (let row = 0; row < rows; row += rowsPerChunk) {
          const count = Math.min(rowsPerChunk, rows - row);
          this.heap.set(packed.subarray(row * rowBytes, (row + count) * rowBytes), 0);
          this.kernel(0, dst + 2 * row * rowBytes, count, rowBytes);
        }
      }
      views.push(view);
      dst += 2 * rows * rowBytes;
    }
    return views;
  }
}
