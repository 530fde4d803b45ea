/**
 * Running int4 paged experts straight from their packed bytes: a WebAssembly SIMD matrix-vector
 * kernel on two threads, no onnxruntime session, no widening to int8 first.
 *
 * Why our own kernel: onnxruntime 1.30 has no fast kernel that takes 4-bit weights as graph
 * inputs (MatMulNBits from an input dequantises all of B to fp32 per call). Widening each expert
 * to int8 and feeding DynamicQuantizeMatMul costs ≈ 3× the memory traffic of the int4 bytes and
 * measured 33 ms per Mixtral-sized expert (84 MiB) here; this kernel reads the packed bytes once:
 * 7.2 ms on two threads, 13 ms on one (weights not in cache).
 *
 * The packing (expert-store.ts): row k of a matrix holds `rowBytes` bytes; byte c holds two signed
 * nibbles q ∈ [-7, 7], the low one for column c and the high one for column c + rowBytes. The
 * kernel uses them as 16·q (`byte << 4` and `byte & 0xF0`: two instructions, no sign extension)
 * and the stored scales are already divided by 16.
 *
 * Per row of activations x: quantise symmetrically to ±511 (per row, so a token's output never
 * depends on its batchmates), accumulate Σₖ 16q·x_q exactly in int32 (|pair| ≤ 2·112·511, at most
 * 8191 pairs: no overflow for K ≤ 16382), then scale in float64. Integer sums are order-free, so
 * the result is bit-identical whatever the thread split, and to `runInt4ExpertScalar`.
 *
 * Inner loop, per two rows k, k+1 and 16 packed bytes (32 columns): load both rows, make 16q
 * planes, interleave the rows byte-wise (`i8x16.shuffle`), sign-extend to i16 and
 * `i32x4.dot_i16x8_s` against (x_k, x_k+1) — 8 multiply-adds per instruction, 64 per iteration.
 * Rows are swept 16 at a time across their whole width (see GEMV_BODY): walking a column band
 * down all rows instead touched one cache line per 4 KiB page and ran 2.5× slower.
 */
import { MessageChannel, type MessagePort, Worker } from 'node:worker_threads';
import type { ExpertBufferPool } from './expert-cache.ts';
import type { Int4ExpertWeights } from './expert-store.ts';

/** A packed int4 matrix: `rows` (K) rows of `rowBytes` bytes → 2·rowBytes output columns. */
export interface Int4Matrix {
  packed: Uint8Array;
  rows: number;
  rowBytes: number;
}

/** Activations are quantised per row to integers in [-ACTIVATION_MAX, ACTIVATION_MAX]. */
export const ACTIVATION_MAX = 511;
const SIMD_WIDTH = 16;
/** Below this many packed bytes a product runs on this thread alone: the hand-off (≈ 20 µs) would cost more. */
const SPLIT_MIN_BYTES = 1 << 20;
const PAGE = 65536;
/** A wasm32 memory's limit (4 GiB) less one page for V8's limit checks. */
const MAX_PAGES = 65535;

// ── the WebAssembly kernel ─────────────────────────────────────────────────────────────────────

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
const sleb = (n: number): number[] => {
  const out: number[] = [];
  for (;;) {
    const byte = n & 0x7f;
    n >>= 7;
    if ((n === 0 && !(byte & 0x40)) || (n === -1 && byte & 0x40)) return [...out, byte];
    out.push(byte | 0x80);
  }
};
const name = (s: string): number[] => [...leb(s.length), ...Buffer.from(s, 'latin1')];
const section = (id: number, body: number[]): number[] => [id, ...leb(body.length), ...body];
const I32 = 0x7f;
const V128 = 0x7b;
const op = {
  block: 0x02,
  loop: 0x03,
  br: 0x0c,
  brIf: 0x0d,
  end: 0x0b,
  select: 0x1b,
  i32Load: 0x28,
  i32Const: 0x41,
  ltU: 0x49,
  geU: 0x4f,
  add: 0x6a,
  mul: 0x6c,
  shl: 0x74,
} as const;
const get = (local: number) => [0x20, local];
const set = (local: number) => [0x21, local];
const tee = (local: number) => [0x22, local];
const i32 = (value: number) => [op.i32Const, ...sleb(value)];
const simd = (code: number, ...immediates: number[]) => [0xfd, ...leb(code), ...immediates];
const v128 = {
  load: (offset = 0) => simd(0x00, 0x00, ...leb(offset)),
  store: (offset = 0) => simd(0x0b, 0x00, ...leb(offset)),
  splat8: (byte: number) => simd(0x0c, ...new Array<number>(16).fill(byte)),
  shuffle: (lanes: number[]) => simd(0x0d, ...lanes),
  i32x4Splat: simd(0x11),
  and: simd(0x4e),
  i8x16Shl: simd(0x6b),
  extendLowS: simd(0x87),
  extendHighS: simd(0x88),
  i32x4Add: simd(0xae),
  dot: simd(0xba),
};

// gemv(src, rowBytes, kBegin, kEnd, xq, acc, rowBlock): for rows [kBegin, kEnd) of the matrix at
// src, acc[c] += Σₖ lo(k, c)·xq[k] and acc[rowBytes + c] += Σₖ hi(k, c)·xq[k] (int32; xq int16;
// kBegin, kEnd, rowBlock even; rowBytes a multiple of 16). Rows are taken `rowBlock` at a time and
// each block sweeps whole rows strip by strip: a few sequential streams the prefetcher follows
// (a column band walked down all rows touches one line per 4 KiB page and stalls on every one).
const P = { src: 0, rowBytes: 1, kBegin: 2, kEnd: 3, xq: 4, acc: 5, rowBlock: 6 } as const;
const L = { kb: 7, kbEnd: 8, strip: 9, row: 10, x: 11, rowEnd: 12, accLo: 13, accHi: 14 } as const;
const ACC = (j: number) => 15 + j; // 8 accumulators: columns c..c+15 (lo plane), then c+rowBytes… (hi)
const V = { lo0: 23, lo1: 24, hi0: 25, hi1: 26, xx: 27, t: 28 } as const;
const INTERLEAVE_LOW = [0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23];
const INTERLEAVE_HIGH = INTERLEAVE_LOW.map((lane) => lane + 8);
const accumulate = (j: number, extend: number[]) => [
  ...get(ACC(j)),
  ...get(V.t),
  ...extend,
  ...get(V.xx),
  ...v128.dot,
  ...v128.i32x4Add,
  ...set(ACC(j)),
];
const rowPair = (a: number, b: number, first: number) => [
  ...get(a),
  ...get(b),
  ...v128.shuffle(INTERLEAVE_LOW),
  ...set(V.t),
  ...accumulate(first, v128.extendLowS),
  ...accumulate(first + 1, v128.extendHighS),
  ...get(a),
  ...get(b),
  ...v128.shuffle(INTERLEAVE_HIGH),
  ...set(V.t),
  ...accumulate(first + 2, v128.extendLowS),
  ...accumulate(first + 3, v128.extendHighS),
];
const planes = (address: number[], lo: number, hi: number) => [
  ...address,
  ...v128.load(),
  ...tee(V.t),
  ...i32(4),
  ...v128.i8x16Shl,
  ...set(lo),
  ...get(V.t),
  ...v128.splat8(0xf0),
  ...v128.and,
  ...set(hi),
];
const accumulators = (first: number, base: number, store: boolean) =>
  [0, 1, 2, 3].flatMap((j) =>
    store ? [...get(base), ...get(ACC(first + j)), ...v128.store(16 * j)] : [...get(base), ...v128.load(16 * j), ...set(ACC(first + j))],
  );
const GEMV_BODY = [
  2,
  8,
  I32,
  14,
  V128,
  ...get(P.kBegin),
  ...set(L.kb),
  op.block,
  0x40,
  op.loop,
  0x40, // row blocks
  ...get(L.kb),
  ...get(P.kEnd),
  op.geU,
  op.brIf,
  1,
  ...get(L.kb),
  ...get(P.rowBlock),
  op.add,
  ...get(P.kEnd),
  ...get(L.kb),
  ...get(P.rowBlock),
  op.add,
  ...get(P.kEnd),
  op.ltU,
  op.select,
  ...set(L.kbEnd),
  ...i32(0),
  ...set(L.strip),
  op.block,
  0x40,
  op.loop,
  0x40, // strips of 16 packed bytes
  ...get(L.strip),
  ...get(P.rowBytes),
  op.geU,
  op.brIf,
  1,
  ...get(P.acc),
  ...get(L.strip),
  ...i32(2),
  op.shl,
  op.add,
  ...set(L.accLo),
  ...get(P.acc),
  ...get(L.strip),
  ...get(P.rowBytes),
  op.add,
  ...i32(2),
  op.shl,
  op.add,
  ...set(L.accHi),
  ...accumulators(0, L.accLo, false),
  ...accumulators(4, L.accHi, false),
  ...get(P.src),
  ...get(L.kb),
  ...get(P.rowBytes),
  op.mul,
  op.add,
  ...get(L.strip),
  op.add,
  ...set(L.row),
  ...get(P.src),
  ...get(L.kbEnd),
  ...get(P.rowBytes),
  op.mul,
  op.add,
  ...get(L.strip),
  op.add,
  ...set(L.rowEnd),
  ...get(P.xq),
  ...get(L.kb),
  ...i32(1),
  op.shl,
  op.add,
  ...set(L.x),
  op.loop,
  0x40, // row pairs
  ...planes(get(L.row), V.lo0, V.hi0),
  ...planes([...get(L.row), ...get(P.rowBytes), op.add], V.lo1, V.hi1),
  ...get(L.x),
  op.i32Load,
  0x01,
  0x00,
  ...v128.i32x4Splat,
  ...set(V.xx), // (x_k, x_k+1) in every lane pair
  ...rowPair(V.lo0, V.lo1, 0),
  ...rowPair(V.hi0, V.hi1, 4),
  ...get(L.row),
  ...get(P.rowBytes),
  ...i32(1),
  op.shl,
  op.add,
  ...set(L.row),
  ...get(L.x),
  ...i32(4),
  op.add,
  ...set(L.x),
  ...get(L.row),
  ...get(L.rowEnd),
  op.ltU,
  op.brIf,
  0,
  op.end,
  ...accumulators(0, L.accLo, true),
  ...accumulators(4, L.accHi, true),
  ...get(L.strip),
  ...i32(SIMD_WIDTH),
  op.add,
  ...set(L.strip),
  op.br,
  0,
  op.end,
  op.end,
  ...get(L.kbEnd),
  ...set(L.kb),
  op.br,
  0,
  op.end,
  op.end,
  op.end,
];
/** Compiled once; instantiated per arena memory (in this thread and in the helper thread). */
const GEMV_MODULE = new WebAssembly.Module(
  Uint8Array.from([
    0x00,
    0x61,
    0x73,
    0x6d,
    0x01,
    0x00,
    0x00,
    0x00,
    ...section(1, [1, 0x60, 7, I32, I32, I32, I32, I32, I32, I32, 0]),
    ...section(2, [1, ...name('env'), ...name('memory'), 0x02, 0x03, 0x01, ...leb(MAX_PAGES)]), // shared memory
    ...section(3, [1, 0]),
    ...section(7, [1, ...name('gemv'), 0x00, 0]),
    ...section(10, [1, ...leb(GEMV_BODY.length), ...GEMV_BODY]),
  ]),
);
type Gemv = (src: number, rowBytes: number, kBegin: number, kEnd: number, xq: number, acc: number, rowBlock: number) => void;

// ── the reference ──────────────────────────────────────────────────────────────────────────────

/** Sign-extended low / high nibble of a packed byte, times 16 (the kernel's weight value). */
export const lowNibble16 = (byte: number): number => (byte << 28) >> 24;
export const highNibble16 = (byte: number): number => ((byte << 24) >> 28) << 4;

/** The same sums as the kernel in plain JS (reference, and shapes the kernel does not take). */
export function int4GemvScalar({ packed, rows, rowBytes }: Int4Matrix, xq: Int16Array, out: Int32Array): void {
  out.fill(0, 0, 2 * rowBytes);
  for (let k = 0; k < rows; k++) {
    const x = xq[k]!;
    if (x === 0) continue;
    const base = k * rowBytes;
    for (let c = 0; c < rowBytes; c++) {
      const byte = packed[base + c]!;
      out[c]! += lowNibble16(byte) * x;
      out[rowBytes + c]! += highNibble16(byte) * x;
    }
  }
}

// ── quantisation and the SwiGLU around the two matrix products ─────────────────────────────────

/** Quantises `values` into `into` (int16, ±ACTIVATION_MAX); returns the scale. */
function quantizeRow(values: Float32Array | Float64Array, into: Int16Array): number {
  let max = 0;
  for (let i = 0; i < values.length; i++) max = Math.max(max, Math.abs(values[i]!));
  const scale = max > 0 ? max / ACTIVATION_MAX : 1;
  for (let i = 0; i < values.length; i++) into[i] = Math.round(values[i]! / scale);
  return scale;
}

/** The kernel's view of one matrix product: xq (int16) in, int32 sums out. */
type Product = (matrix: Int4Matrix, xq: Int16Array, out: Int32Array) => void;

/**
 * y = w2(silu(w1·x) ⊙ w3·x) for each of `rows` rows of x ([rows, dim]), one row at a time, with
 * `product` doing the integer sums. `xq`/`sums` are scratch of ≥ max(dim, ffn) / 2·ffn entries.
 */
function swiglu(
  product: Product,
  x: Float32Array,
  rows: number,
  weights: Int4ExpertWeights,
  dim: number,
  ffn: number,
  xq: Int16Array,
  sums: Int32Array,
): Float32Array {
  const w13: Int4Matrix = { packed: weights.p13, rows: dim, rowBytes: ffn };
  const w2: Int4Matrix = { packed: weights.p2, rows: ffn, rowBytes: dim / 2 };
  const hidden = new Float64Array(ffn);
  const y = new Float32Array(rows * dim);
  for (let r = 0; r < rows; r++) {
    const xScale = quantizeRow(x.subarray(r * dim, (r + 1) * dim), xq);
    product(w13, xq, sums);
    for (let c = 0; c < ffn; c++) {
      const gate = sums[c]! * xScale * weights.s13[c]!;
      const up = sums[ffn + c]! * xScale * weights.s13[ffn + c]!;
      hidden[c] = (gate / (1 + Math.exp(-gate))) * up;
    }
    const hScale = quantizeRow(hidden, xq);
    product(w2, xq, sums);
    for (let n = 0; n < dim; n++) y[r * dim + n] = sums[n]! * hScale * weights.s2[n]!;
  }
  return y;
}

/** The whole expert in plain JS: bit-identical to `Int4ExpertKernel.run` (tested). */
export function runInt4ExpertScalar(x: Float32Array, rows: number, weights: Int4ExpertWeights, dim: number, ffn: number): Float32Array {
  return swiglu(int4GemvScalar, x, rows, weights, dim, ffn, new Int16Array(Math.max(dim, ffn)), new Int32Array(2 * Math.max(ffn, dim / 2)));
}

// ── arenas: the expert cache's buffers inside shared wasm memories ─────────────────────────────

/** One shared wasm memory: a small scratch (xq, sums) then fixed-size page-in buffers. */
class Arena {
  readonly memory: WebAssembly.Memory;
  readonly gemv: Gemv;
  readonly xq: Int16Array;
  readonly sums: Int32Array;
  /** The helper thread's partial sums (it takes other rows than this thread). */
  readonly helperSums: Int32Array;
  private readonly free: number[] = [];
  private readonly stride: number;
  private readonly buffersStart: number;

  constructor(
    readonly id: number,
    scratch: { xq: number; sums: number },
    private readonly bufferBytes: number,
    count: number,
  ) {
    const sumsStart = alignUp(2 * scratch.xq, 64);
    const helperSumsStart = alignUp(sumsStart + 4 * scratch.sums, 64);
    this.buffersStart = alignUp(helperSumsStart + 4 * scratch.sums, 64);
    this.stride = alignUp(bufferBytes, 64);
    const pages = Math.ceil((this.buffersStart + count * this.stride) / PAGE);
    this.memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
    this.gemv = new WebAssembly.Instance(GEMV_MODULE, { env: { memory: this.memory } }).exports.gemv as Gemv;
    this.xq = new Int16Array(this.memory.buffer, 0, scratch.xq);
    this.sums = new Int32Array(this.memory.buffer, sumsStart, scratch.sums);
    this.helperSums = new Int32Array(this.memory.buffer, helperSumsStart, scratch.sums);
    for (let slot = count - 1; slot >= 0; slot--) this.free.push(slot);
  }

  static buffersThatFit(scratch: { xq: number; sums: number }, bufferBytes: number): number {
    const start = alignUp(alignUp(alignUp(2 * scratch.xq, 64) + 4 * scratch.sums, 64) + 4 * scratch.sums, 64);
    return Math.max(0, Math.floor((MAX_PAGES * PAGE - start) / alignUp(bufferBytes, 64)));
  }

  allocate(): Uint8Array | null {
    const slot = this.free.pop();
    return slot === undefined ? null : new Uint8Array(this.memory.buffer, this.buffersStart + slot * this.stride, this.bufferBytes);
  }

  owns(bytes: Uint8Array): boolean {
    return bytes.buffer === this.memory.buffer;
  }

  release(bytes: Uint8Array): void {
    this.free.push((bytes.byteOffset - this.buffersStart) / this.stride);
  }
}

function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

// ── sharing a product with a helper thread ─────────────────────────────────────────────────────

/**
 * A product's rows are cut into chunks that both threads claim from one shared counter; each
 * thread sums its rows into its own int32 partial sums, added at the end (integer sums: the
 * result does not depend on who took which rows). A helper that wakes late (2 cores, other work)
 * only takes what is left: the calling thread never waits for it to start, only for a chunk it is
 * already running.
 *
 * Control words: JOB counts published products (the helper sleeps on it); CLAIM is
 * (product seq << 16 | next chunk); INFLIGHT counts helper claim attempts in progress; HELPED is
 * the last seq the helper summed rows for; FAILED is set by a helper that threw. Each product's
 * arguments sit in one of two slots (seq & 1): the caller writes the next product's slot while a
 * late helper may still read the current one.
 */
const JOB = 0;
const CLAIM = 1;
const INFLIGHT = 2;
const FAILED = 3;
const HELPED = 4;
const ARGS = 5; // two slots of: arena id, src, rowBytes, rows, xq, helper sums, chunk rows, chunks
const SLOT = 8;
/** Rows per claimed chunk, and per sweep inside the kernel (even). */
const CHUNK_ROWS = 256;
const ROW_BLOCK = 16;
/** A chunk takes well under a millisecond: far beyond this, the helper is gone. */
const HELPER_TIMEOUT_MS = 30_000;

const HELPER_SOURCE = `
const { workerData, receiveMessageOnPort } = require('node:worker_threads');
const { module, control, port } = workerData;
const arenas = new Map();
const receive = () => {
  const received = receiveMessageOnPort(port);
  if (received) {
    const { id, memory } = received.message;
    arenas.set(id, { memory, gemv: new WebAssembly.Instance(module, { env: { memory } }).exports.gemv });
  }
  return received !== undefined;
};
let seenJob = Atomics.load(control, ${JOB});
for (;;) {
  Atomics.wait(control, ${JOB}, seenJob);
  seenJob = Atomics.load(control, ${JOB});
  for (;;) {
    Atomics.add(control, ${INFLIGHT}, 1);
    let more = false;
    try {
      const claim = Atomics.load(control, ${CLAIM});
      const seq = claim >>> 16;
      const base = ${ARGS} + (seq & 1) * ${SLOT};
      const [id, src, rowBytes, rows, xq, sums, chunkRows, chunks] = control.subarray(base, base + ${SLOT});
      const chunk = claim & 0xffff;
      if (chunk < chunks && Atomics.compareExchange(control, ${CLAIM}, claim, claim + 1) === claim) {
        // An arena posted just before this product may still be on its way.
        while (receive());
        for (let spins = 0; !arenas.has(id) && spins < 1e7; spins++) receive();
        const arena = arenas.get(id);
        if (Atomics.load(control, ${HELPED}) !== seq) {
          new Int32Array(arena.memory.buffer, sums, 2 * rowBytes).fill(0);
          Atomics.store(control, ${HELPED}, seq);
        }
        arena.gemv(src, rowBytes, chunk * chunkRows, Math.min(rows, (chunk + 1) * chunkRows), xq, sums, ${ROW_BLOCK});
        more = true;
      } else more = chunk < chunks; // lost a race for a chunk: try the next one
    } catch {
      Atomics.store(control, ${FAILED}, 1);
    }
    Atomics.sub(control, ${INFLIGHT}, 1);
    Atomics.notify(control, ${INFLIGHT});
    if (!more) break;
  }
}`;

class Helper {
  private readonly control = new Int32Array(new SharedArrayBuffer(4 * (ARGS + 2 * SLOT)));
  private readonly port: MessagePort;
  private readonly worker: Worker;
  private seq = 0;

  constructor() {
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    this.worker = new Worker(HELPER_SOURCE, {
      eval: true,
      workerData: { module: GEMV_MODULE, control: this.control, port: port2 },
      transferList: [port2],
    });
    this.worker.unref();
  }

  addArena(arena: Arena): void {
    this.port.postMessage({ id: arena.id, memory: arena.memory });
  }

  /** sums (zeroed) += the product over all rows, chunks of rows shared with the helper thread. */
  share(arena: Arena, src: number, rowBytes: number, rows: number, xq: number, sums: Int32Array): void {
    const { control } = this;
    const chunks = Math.ceil(rows / CHUNK_ROWS);
    // Never 0, the "helper took no rows" mark. No helper attempt of the previous product is in
    // flight (we waited for INFLIGHT), so clearing HELPED cannot race with its store.
    this.seq = (this.seq % 0x7fff) + 1;
    control.set([arena.id, src, rowBytes, rows, xq, arena.helperSums.byteOffset, CHUNK_ROWS, chunks], ARGS + (this.seq & 1) * SLOT);
    Atomics.store(control, HELPED, 0);
    Atomics.store(control, CLAIM, this.seq << 16);
    Atomics.add(control, JOB, 1);
    Atomics.notify(control, JOB);
    for (;;) {
      const chunk = Atomics.add(control, CLAIM, 1) & 0xffff;
      if (chunk >= chunks) break;
      arena.gemv(src, rowBytes, chunk * CHUNK_ROWS, Math.min(rows, (chunk + 1) * CHUNK_ROWS), xq, sums.byteOffset, ROW_BLOCK);
    }
    // Every chunk is claimed; wait for the ones the helper is still running.
    const deadline = performance.now() + HELPER_TIMEOUT_MS;
    for (let inflight = Atomics.load(control, INFLIGHT); inflight !== 0; inflight = Atomics.load(control, INFLIGHT)) {
      if (Atomics.wait(control, INFLIGHT, inflight, 1000) === 'timed-out' && performance.now() > deadline) {
        throw new Error(`the int4 expert helper thread did not finish its chunk within ${HELPER_TIMEOUT_MS / 1000} s`);
      }
    }
    if (Atomics.exchange(control, FAILED, 0) !== 0) throw new Error('the int4 expert helper thread failed on its part of a matrix product');
    if (Atomics.load(control, HELPED) === this.seq) {
      const partial = arena.helperSums;
      for (let i = 0; i < 2 * rowBytes; i++) sums[i]! += partial[i]!;
    }
  }

  async terminate(): Promise<void> {
    this.port.close();
    await this.worker.terminate();
  }
}

// ── the kernel the paged-expert provider uses ──────────────────────────────────────────────────

export interface Int4ExpertKernelOptions {
  dim: number;
  ffn: number;
  /** Size of one page-in buffer (an expert file image). */
  bufferBytes: number;
  /** Buffers the first arenas are sized for (the cache's experts plus loads in flight); more get a new arena. */
  expectedBuffers: number;
  /** 2: this thread plus a helper thread; 1: this thread alone. */
  threads: number;
}

/**
 * Runs int4 experts from the expert cache's buffers, which it allocates inside its arenas (the
 * kernel can only address its own memory; an arena is one shared wasm memory of ≤ 4 GiB). Each
 * `run` is synchronous from start to end, so one scratch per arena suffices even when forward
 * passes overlap.
 */
export class Int4ExpertKernel implements ExpertBufferPool {
  private readonly arenas: Arena[] = [];
  private readonly helper: Helper | null;
  private readonly scratch: { xq: number; sums: number };
  private provisioned = 0;

  constructor(private readonly options: Int4ExpertKernelOptions) {
    const { dim, ffn } = options;
    this.scratch = { xq: Math.max(dim, ffn), sums: 2 * Math.max(ffn, dim / 2) };
    this.helper = options.threads > 1 ? new Helper() : null;
  }

  allocate(): Uint8Array {
    for (const arena of this.arenas) {
      const buffer = arena.allocate();
      if (buffer) return buffer;
    }
    const fit = Arena.buffersThatFit(this.scratch, this.options.bufferBytes);
    const count = Math.max(1, Math.min(fit, this.options.expectedBuffers - this.provisioned));
    const arena = new Arena(this.arenas.length, this.scratch, this.options.bufferBytes, count);
    this.arenas.push(arena);
    this.helper?.addArena(arena);
    this.provisioned += count;
    return arena.allocate()!;
  }

  release(buffer: Uint8Array): void {
    this.arenas.find((arena) => arena.owns(buffer))?.release(buffer);
  }

  /** y = w2(silu(w1·x) ⊙ w3·x) for `rows` rows of x [rows, dim]; `weights` must live in one of our buffers. */
  run(x: Float32Array, rows: number, weights: Int4ExpertWeights): Float32Array {
    const { dim, ffn } = this.options;
    const arena = this.arenas.find((candidate) => candidate.owns(weights.p13));
    if (!arena)
      throw new RangeError("int4 expert weights outside the kernel's arenas (allocate page-in buffers with Int4ExpertKernel.allocate)");
    return swiglu((matrix, xq, sums) => this.product(arena, matrix, xq, sums), x, rows, weights, dim, ffn, arena.xq, arena.sums);
  }

  /** One matrix product in `arena`: rows shared with the helper thread when it is worth it. */
  private product(arena: Arena, { packed, rows, rowBytes }: Int4Matrix, xq: Int16Array, sums: Int32Array): void {
    if (rowBytes % SIMD_WIDTH !== 0 || rows % 2 !== 0) {
      int4GemvScalar({ packed, rows, rowBytes }, xq, sums);
      return;
    }
    sums.fill(0, 0, 2 * rowBytes);
    if (this.helper && packed.byteLength >= SPLIT_MIN_BYTES && rows >= 2 * CHUNK_ROWS) {
      this.helper.share(arena, packed.byteOffset, rowBytes, rows, xq.byteOffset, sums);
    } else {
      arena.gemv(packed.byteOffset, rowBytes, 0, rows, xq.byteOffset, sums.byteOffset, ROW_BLOCK);
    }
  }

  async dispose(): Promise<void> {
    await this.helper?.terminate();
  }
}
