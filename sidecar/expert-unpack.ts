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
 * The kernel is a few dozen bytes of hand-assembled WebAssembly SIMD (Node ≥ 16.4 runs it
 * unflagged). It can only address its own memory, so the expert cache's buffers live in that
 * memory (`Int4Arenas`) and are widened in place: 0.48 ms for a 5.3 MiB bench expert, 14.7 ms for
 * an 84 MiB Mixtral one (≈ 30 GB/s of memory traffic: bandwidth-bound). Buffers from elsewhere are
 * copied in a chunk at a time first (0.86 / 19.7 ms); plain JS takes 1.9 / 31 ms. The int8 output
 * lives in the module's memory too, and the onnxruntime tensors wrap it without a copy.
 */

import type { ExpertBufferPool } from './expert-cache.ts';

/** One expert's weights, packed int4 (see the module comment). */
export interface PackedInt4Matrix {
  /** [rows, rowBytes]: rowBytes packed bytes per row → 2·rowBytes int8 columns. */
  packed: Uint8Array;
  rows: number;
  rowBytes: number;
}

const CHUNK_BYTES = 1 << 20;
const PAGE = 65536;
/** A wasm32 memory's limit: 65536 pages of 64 KiB (4 GiB), less one page for V8's limit checks. */
const MAX_PAGES = 65535;
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
 *
 * With `slots`, the module's memory also holds that many page-in buffers (`allocateSlot`): the
 * expert cache reads packed experts straight into them, and `unpack` then widens those in place,
 * with no copy into the module's memory first (measured: 14.7 vs 19.7 ms for a Mixtral expert,
 * 0.48 vs 0.86 ms for a bench one). A wasm32 memory holds at most 4 GiB, hence several arenas
 * for large budgets (see `slotsThatFit`).
 */
export class Int4Unpacker {
  private readonly memory: WebAssembly.Memory;
  private readonly kernel: (src: number, dst: number, rows: number, rowBytes: number) => void;
  private readonly heap: Uint8Array;
  private readonly freeSlots: number[] = [];
  private readonly slotBytes: number;
  private readonly slotStride: number;
  private readonly slotsStart: number;

  /**
   * @param outputBytes the largest total int8 output of one `unpack` call
   * @param slots page-in buffers of `bytes` each to place in this memory (none by default)
   */
  constructor(
    readonly outputBytes: number,
    slots: { bytes: number; count: number } = { bytes: 0, count: 0 },
  ) {
    this.slotBytes = slots.bytes;
    this.slotStride = alignUp(slots.bytes, 64);
    this.slotsStart = alignUp(CHUNK_BYTES + outputBytes, 64);
    const pages = Math.ceil((this.slotsStart + slots.count * this.slotStride) / PAGE);
    if (pages > MAX_PAGES) throw new RangeError(`an unpacker of ${pages} pages exceeds a wasm32 memory (${MAX_PAGES})`);
    this.memory = new WebAssembly.Memory({ initial: pages, maximum: pages });
    const instance = new WebAssembly.Instance(KERNEL_MODULE, { env: { memory: this.memory } });
    this.kernel = instance.exports.unpack as (src: number, dst: number, rows: number, rowBytes: number) => void;
    this.heap = new Uint8Array(this.memory.buffer);
    for (let slot = slots.count - 1; slot >= 0; slot--) this.freeSlots.push(slot);
  }

  /** How many slots of `slotBytes` fit beside an `outputBytes` scratch in one wasm32 memory. */
  static slotsThatFit(outputBytes: number, slotBytes: number): number {
    return Math.max(0, Math.floor((MAX_PAGES * PAGE - alignUp(CHUNK_BYTES + outputBytes, 64)) / alignUp(slotBytes, 64)));
  }

  /** A free page-in buffer inside this memory, or null when all are taken. */
  allocateSlot(): Uint8Array | null {
    const slot = this.freeSlots.pop();
    return slot === undefined ? null : new Uint8Array(this.memory.buffer, this.slotsStart + slot * this.slotStride, this.slotBytes);
  }

  /** True when `bytes` is one of this memory's slots. */
  owns(bytes: Uint8Array): boolean {
    return bytes.buffer === this.memory.buffer;
  }

  /** Gives a slot from `allocateSlot` back. */
  releaseSlot(bytes: Uint8Array): void {
    if (!this.owns(bytes)) throw new RangeError('releasing a buffer that is not one of this unpacker\'s slots');
    this.freeSlots.push((bytes.byteOffset - this.slotsStart) / this.slotStride);
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
      } else if (this.owns(packed)) {
        this.kernel(packed.byteOffset, dst, rows, rowBytes); // in place: the packed bytes live here
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

function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

/**
 * The expert cache's page-in buffers for int4 stores, placed in widening arenas (unpackers with
 * slots) so that each cached expert is widened in place; and the unpacker to widen a given
 * expert with. Arenas are created as the cache asks for buffers, sized for `expectedBuffers` in
 * all; beyond that, plain buffers (widened through a copy). Each run in flight holds its
 * unpacker's scratch: a second run on the same arena (overlapping forward passes) widens into a
 * spare, copying.
 */
export class Int4Arenas implements ExpertBufferPool {
  private readonly arenas: Int4Unpacker[] = [];
  private readonly spares: Int4Unpacker[] = [];
  private readonly busy = new Set<Int4Unpacker>();
  private provisioned = 0;

  constructor(
    private readonly outputBytes: number,
    private readonly bufferBytes: number,
    private readonly expectedBuffers: number,
  ) {}

  allocate(): Uint8Array {
    for (const arena of this.arenas) {
      const slot = arena.allocateSlot();
      if (slot) return slot;
    }
    const count = Math.min(Int4Unpacker.slotsThatFit(this.outputBytes, this.bufferBytes), this.expectedBuffers - this.provisioned);
    if (count <= 0) return new Uint8Array(this.bufferBytes);
    const arena = new Int4Unpacker(this.outputBytes, { bytes: this.bufferBytes, count });
    this.arenas.push(arena);
    this.provisioned += count;
    return arena.allocateSlot()!;
  }

  release(buffer: Uint8Array): void {
    this.arenas.find((arena) => arena.owns(buffer))?.releaseSlot(buffer);
  }

  /** Widens `matrices` (one expert) and runs `use` on the int8 views, holding the scratch until it settles. */
  async withWidened<T>(matrices: PackedInt4Matrix[], use: (views: Int8Array[]) => Promise<T>): Promise<T> {
    const owner = this.arenas.find((arena) => arena.owns(matrices[0]!.packed));
    let unpacker = owner && !this.busy.has(owner) ? owner : this.spares.find((spare) => !this.busy.has(spare));
    if (!unpacker) this.spares.push((unpacker = new Int4Unpacker(this.outputBytes)));
    this.busy.add(unpacker);
    try {
      return await use(unpacker.unpack(matrices));
    } finally {
      this.busy.delete(unpacker);
    }
  }
}
