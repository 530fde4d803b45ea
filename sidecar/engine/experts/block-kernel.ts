/**
 * Mixtral experts straight from their Q4_0 / Q8_0 blocks (formats/blocks.ts): a WebAssembly SIMD
 * kernel on two threads, the same one whether an expert stays resident or was paged in, so
 * logits do not depend on the cache budget. On x86 the experts run natively instead (native-gemm.ts:
 * AVX-512 VNNI or AVX2 products, and the same SwiGLU and quantisation steps in C++, on the addon's
 * one helper thread) with the same bits, checked against the module at load.
 *
 * Why our own kernel: onnxruntime 1.30 has no fast kernel that takes 4-bit weights as graph
 * inputs (MatMulNBits from an input dequantises all of B to fp32 per call), and its int8 path
 * saturates on CPUs without VNNI (docs/engine-facts.md). This kernel reads each block once.
 *
 * The arithmetic is llama.cpp's: each row of activations is quantised per block of 32 to int8
 * with an fp32 scale dx (quantize_row_q8_0), integer dot products per block, then
 *   y[n] = Σ_blocks fp32(isum) · (dw · dx)      accumulated in fp32, blocks in order.
 * Q4_0 nibbles are used unsigned (0..15) and the offset folded out once per block:
 * Σ x·(q − 8) = Σ x·q − 8·Σx, with 8·Σx precomputed per activation block. Integer sums are exact,
 * and the fp32 steps happen in a fixed order per output, so the result is the same for every
 * thread split, batch size and variant (tested against `blockGemmScalar`).
 *
 * Q4_0 experts are stored with rows interleaved four at a time, in bands of 16 rows
 * (formats/blocks.ts, Q4_0X4): one 16-byte load holds four bytes of each of four rows, so each
 * i32 lane accumulates one output row and a block needs no horizontal sums — about 40% fewer
 * instructions per weight byte than rows in GGUF order, which is what bounds this kernel (it is
 * compute-bound at one token, not memory-bound). Activations are broadcast four at a time to meet
 * them.
 *
 * Two variants of the Q4_0 inner product, bit-identical:
 *   relaxed-simd  i16x8.relaxed_dot_i8x16_i7x16_s (one pmaddubsw on x86): unsigned nibbles are
 *                 valid i7 operands; a lane sums 16 products of |x| ≤ 127 and q ≤ 15 (≤ 30480), so
 *                 eight dots add up in i16 without saturating before one widening to i32.
 *   simd          nibbles and activations widened to i16 and i32x4.dot_i16x8_s: for engines
 *                 without relaxed SIMD.
 * Node 20's V8 has relaxed SIMD behind --experimental-wasm-relaxed-simd (set at load; Node 22 has
 * it on), and its i32x4 "dot … add" form returns wrong sums, so only the i16x8 form is used and
 * the variant is checked against the plain one on first use. Q8_0 weights are signed (not i7) and
 * stay in GGUF's row order: sign-extending loads and i32x4.dot_i16x8_s, four rows at a time with
 * their partial sums reduced by shuffles.
 *
 * Loop order: a few output rows at a time, then each activation row against those rows — a batch
 * re-reads the rows' few KiB from L1/L2, not from memory.
 */

import { setFlagsFromString } from 'node:v8';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import wabtInit from 'wabt';
import {
  BLOCK,
  BLOCK_BYTES,
  type BlockFormat,
  fromFloat16Bits,
  Q4_0X4_BAND_ROWS,
  Q4_0X4_GROUP_BYTES,
  Q4_0X4_ROWS,
  q4_0x4Offset,
} from '../../formats/blocks.ts';
import { HelperThread } from '../helper-thread.ts';
import { DIRECT_IO_ALIGNMENT, directReadCapacity } from './direct-read.ts';
import type { ExpertBufferPool } from './expert-cache.ts';
import type { ExpertWeights } from './expert-store.ts';
import { loadNativeGemm, type NativeGemm, type NativeIsa, type NativeProduct } from './native-gemm.ts';

/** The WebAssembly module's variants of the Q4_0 inner product (same bits). */
export type WasmVariant = 'relaxed-simd' | 'simd';
/**
 * Which code runs the experts: the native addon on an x86 instruction set (native-gemm.ts), or the
 * WebAssembly module. All give the same bits.
 */
export type KernelVariant = `native-${NativeIsa}` | WasmVariant;

/** Activation rows quantised and multiplied per pass (scratch size; results do not depend on it). */
const ROWS_PER_PASS = 16;
/** The most rows per expert `runTogether` runs one expert per thread (one pass); beyond, one after the other. */
export const TOGETHER_MAX_ROWS = ROWS_PER_PASS;
/**
 * Output rows per claimed chunk when two threads share a product (a multiple of 4). Each claim
 * costs about a microsecond (atomics on a line both cores write, a call into the module): at 64
 * rows that was a third of a small expert's w13 chunk. Measured, one token, two threads: the bench
 * shape's 5.9 MiB experts 16.0–16.5 GB/s at 64 rows, 19.4–20.4 at 256; the 94.5 MiB 8x7B expert
 * 24.3–25.8 and 24.0–27.0; at 512 rows the last chunks leave one thread idle (19.2 GB/s).
 */
const CHUNK_ROWS = 256;
/** Below this many weight bytes a product runs on this thread alone: the hand-off (≈ 20 µs) would cost more. */
const SPLIT_MIN_BYTES = 256 * 1024;
const PAGE = 65536;
/** A wasm32 memory's limit (4 GiB) less one page for V8's limit checks. */
const MAX_PAGES = 65535;
/** Page-in buffers start on this boundary and span whole blocks of it (O_DIRECT reads need both). */
export const BUFFER_ALIGNMENT = DIRECT_IO_ALIGNMENT;

/**
 * A quantised activation block as the kernel reads it, one pointer for all of it: 32 int8 values,
 * then the fp32 scale, then 8 · Σ values (Q4_0's offset of 8 folded out once per block).
 */
export const ACTIVATION_RECORD_BYTES = BLOCK + 8;

// ── the WebAssembly kernel, in text form ───────────────────────────────────────────────────────

const splatI32 = (value: number) => `(v128.const i32x4 ${value} ${value} ${value} ${value})`;
/** Byte lanes of i8x16.shuffle picking i32 lanes `lanes` from (a, b) (b's lanes are 4..7). */
const pick = (lanes: number[]) => lanes.flatMap((lane) => [0, 1, 2, 3].map((byte) => 4 * lane + byte)).join(' ');

/** i32 lanes [a0+a1, a2+a3, b0+b1, b2+b3]: row sums from two vectors of pair sums. */
const rowSums = (a: string, b: string) => `(i32x4.add
    (i8x16.shuffle ${pick([0, 2, 4, 6])} (local.get $${a}) (local.get $${b}))
    (i8x16.shuffle ${pick([1, 3, 5, 7])} (local.get $${a}) (local.get $${b})))`;
const pairSums = (a: string, b: string, into: string) => `(local.set $${into} (i32x4.add
    (i8x16.shuffle ${pick([0, 1, 4, 5])} (local.get $${a}) (local.get $${b}))
    (i8x16.shuffle ${pick([2, 3, 6, 7])} (local.get $${a}) (local.get $${b}))))`;

/**
 * The fp16 scales of four rows' current blocks (rows `first`…`first`+3, `stride` bytes apart) as
 * f32x4, exactly: h << 16 then an arithmetic shift by 3 puts the magnitude at f32's bits 27–13
 * with the sign at 31 (bits 30–28 cleared by the mask), which as an f32 is the value · 2^-112.
 * The lanes are loaded into whatever $q holds: the shift by 16 discards the other half of each lane.
 */
const scales = (stride: number, first: number) => `(f32x4.mul
    (v128.and
      (i32x4.shr_s (i32x4.shl
        (v128.load16_lane offset=${(first + 3) * stride} align=1 6 (local.get $p) (v128.load16_lane offset=${(first + 2) * stride} align=1 4 (local.get $p)
        (v128.load16_lane offset=${(first + 1) * stride} align=1 2 (local.get $p) (v128.load16_lane offset=${first * stride} align=1 0 (local.get $p) (local.get $q)))))
        (i32.const 16)) (i32.const 3))
      (local.get $signAndMagnitude))
    (local.get $twoTo112))`;

/** The activation block as i16x8 × 4 (elements 0–7, 8–15, 16–23, 24–31), for the widening products. */
const WIDE_X = [0, 8, 16, 24].map((offset, i) => `(local.set $x${i} (v128.load8x8_s offset=${offset} align=1 (local.get $xp)))`).join('\n');

/** Σ x·q over the Q8_0 block `at` bytes after $p, as four i32 lanes. */
const q8RowDot = (at: number): string => {
  const part = (i: number) => `(i32x4.dot_i16x8_s (local.get $x${i}) (v128.load8x8_s offset=${at + 2 + 8 * i} align=1 (local.get $p)))`;
  return `(i32x4.add (i32x4.add ${part(0)} ${part(1)}) (i32x4.add ${part(2)} ${part(3)}))`;
};

/** The export running `format` products over `cols` inputs. */
const gemmName = (format: BlockFormat, cols: number) => `${format}_${cols}`;

/**
 * The activation block's scale and Q4_0 offset, splatted where used (one broadcast load each):
 * kept in registers they would push the accumulators out to the stack.
 */
const DX = `(v128.load32_splat offset=${BLOCK} (local.get $xp))`;
const OFFSET = `(v128.load32_splat offset=${BLOCK + 4} (local.get $xp))`;

/** Output rows one step of the kernel computes (Q8_0: two groups of four; Q4_0: one interleaved group, twice). */
const ROWS_PER_STEP = 8;

/**
 * A product's frame: for output rows [row, rowEnd) (multiples of 8) of the block matrix at w and
 * activation rows i < m (x: m·cols/32 ACTIVATION_RECORD_BYTES records), out[i·n + r] = y. `start`
 * points $p at the first block of the step's rows; `blocks` is one block column, which advances $p
 * by `advance` and $xp by one record; `store` writes the accumulators to $at.
 */
const gemmFrame = (
  name: string,
  nb: number,
  rowsPerStep: number,
  parts: {
    locals: string;
    start: string;
    blocks: string;
    /** Bytes from one block column to the next (a WAT expression). */
    advance: string;
    store: string;
    /** Two activation rows per pass (rows i → acc0, i + 1 → acc1), sharing the weights' unpacking. */
    pair?: { blocks: string; store: string };
  },
) => `
  (func (export "${name}") (param $w i32) (param $row i32) (param $rowEnd i32) (param $m i32)
        (param $x i32) (param $out i32) (param $n i32)
    (local $i i32) (local $b i32) (local $p i32) (local $xp i32) (local $at i32)
    (local $acc0 v128) (local $acc1 v128) (local $q v128)
    ${parts.locals}
    ;; Constants in locals, set once: V8 would otherwise rebuild them in the loop.
    (local $lowNibbles v128) (local $signAndMagnitude v128) (local $twoTo112 v128) (local $ones v128)
    (local.set $lowNibbles ${splatI32(0x0f0f0f0f)})
    ;; Pairwise i16 sums as a dot product with ones: extadd_pairwise reloads its constant each time.
    (local.set $ones (v128.const i16x8 1 1 1 1 1 1 1 1))
    (local.set $signAndMagnitude ${splatI32(0x8fffffff)})
    (local.set $twoTo112 (v128.const f32x4 0x1p112 0x1p112 0x1p112 0x1p112))
    (block $done (loop $rows
      (br_if $done (i32.ge_u (local.get $row) (local.get $rowEnd)))
      (local.set $i (i32.const 0))
      (block $rowsDone (loop $activations
        (br_if $rowsDone (i32.ge_u (local.get $i) (local.get $m)))
        ${parts.start}
        (local.set $xp (i32.add (local.get $x) (i32.mul (local.get $i) (i32.const ${nb * ACTIVATION_RECORD_BYTES}))))
        (local.set $acc0 (v128.const i32x4 0 0 0 0))
        (local.set $acc1 (v128.const i32x4 0 0 0 0))
        (local.set $b (i32.const ${nb}))
        (local.set $at (i32.add (local.get $out) (i32.shl (i32.add (i32.mul (local.get $i) (local.get $n)) (local.get $row)) (i32.const 2))))
        ${
          parts.pair
            ? `(if (i32.lt_u (i32.add (local.get $i) (i32.const 1)) (local.get $m))
          (then
            (loop $pairBlocks
              ${parts.pair.blocks}
              (local.set $p (i32.add (local.get $p) ${parts.advance}))
              (local.set $xp (i32.add (local.get $xp) (i32.const ${ACTIVATION_RECORD_BYTES})))
              (br_if $pairBlocks (local.tee $b (i32.sub (local.get $b) (i32.const 1)))))
            ${parts.pair.store}
            (local.set $i (i32.add (local.get $i) (i32.const 2)))
            (br $activations)))`
            : ''
        }
        (loop $blocks
          ${parts.blocks}
          (local.set $p (i32.add (local.get $p) ${parts.advance}))
          (local.set $xp (i32.add (local.get $xp) (i32.const ${ACTIVATION_RECORD_BYTES})))
          (br_if $blocks (local.tee $b (i32.sub (local.get $b) (i32.const 1)))))
        ${parts.store}
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $activations)))
      (local.set $row (i32.add (local.get $row) (i32.const ${rowsPerStep})))
      (br $rows)))
  )`;

/** acc += fp32(Σ) · (dw · dx), the order every variant and the scalar reference use. */
const accumulate = (acc: string, sums: string, dw: string) =>
  `(local.set $${acc} (f32x4.add (local.get $${acc}) (f32x4.mul (f32x4.convert_i32x4_s ${sums}) (f32x4.mul ${dw} ${DX}))))`;

/** Q8_0 in GGUF's row order: eight rows per step, as two groups of four sharing the activation loads. */
const q8Gemm = (cols: number): string => {
  const nb = cols / BLOCK;
  const size = BLOCK_BYTES.q8_0;
  const stride = nb * size;
  const group = (first: number, acc: string) => `(local.set $s0 ${q8RowDot(first * stride)})
          (local.set $s1 ${q8RowDot((first + 1) * stride)})
          (local.set $s2 ${q8RowDot((first + 2) * stride)})
          (local.set $s3 ${q8RowDot((first + 3) * stride)})
          ${pairSums('s0', 's1', 't01')}
          ${pairSums('s2', 's3', 't23')}
          ${accumulate(acc, rowSums('t01', 't23'), scales(stride, first))}`;
  return gemmFrame(gemmName('q8_0', cols), nb, ROWS_PER_STEP, {
    locals: `(local $x0 v128) (local $x1 v128) (local $x2 v128) (local $x3 v128)
    (local $s0 v128) (local $s1 v128) (local $s2 v128) (local $s3 v128) (local $t01 v128) (local $t23 v128)`,
    start: `(local.set $p (i32.add (local.get $w) (i32.mul (local.get $row) (i32.const ${stride}))))`,
    blocks: `${WIDE_X}
          ${group(0, 'acc0')}
          ${group(4, 'acc1')}`,
    advance: `(i32.const ${size})`,
    store: `(v128.store align=4 (local.get $at) (local.get $acc0))
        (v128.store offset=16 align=4 (local.get $at) (local.get $acc1))`,
  });
};

/**
 * The four fp16 scales of an interleaved group's block (8 bytes at `at` after $p) as f32x4, exactly:
 * sign-extended to i32 and shifted left by 13, the sign fills bits 31–28 and the magnitude sits at
 * f32's bits 27–13; clearing bits 30–28 leaves an f32 of the value · 2^-112.
 */
const groupScales = (at: number) => `(f32x4.mul
    (v128.and (i32x4.shl (v128.load16x4_s offset=${at} align=1 (local.get $p)) (i32.const 13)) (local.get $signAndMagnitude))
    (local.get $twoTo112))`;

/** Slice k (16 bytes: four bytes of each of the group's four rows) of the group block at $p, into $q. */
const loadSlice = (k: number) => `(local.set $q (v128.load offset=${2 * Q4_0X4_ROWS + 16 * k} align=1 (local.get $p)))`;
const LOW_NIBBLES = `(v128.and (local.get $q) (local.get $lowNibbles))`;
// A 16-bit shift and the low-nibble mask: V8 lowers i8x16.shr_u to the same two instructions plus a
// rebuilt mask each time.
const HIGH_NIBBLES = `(v128.and (i16x8.shr_u (local.get $q) (i32.const 4)) (local.get $lowNibbles))`;

/**
 * Σ x·q for the four rows of the interleaved Q4_0 group block at $p (q the unsigned nibbles), one
 * row per i32 lane, before the offset: slice k's low nibbles meet activations 4k…4k+3 and its
 * high nibbles activations 16+4k…16+4k+3, each broadcast to all four lanes.
 */
const q4GroupDot = (variant: KernelVariant): string => {
  const lines: string[] = [];
  for (let k = 0; k < 4; k++) {
    // Broadcast loads (one vbroadcastss each) rather than one load and shuffles: the same count,
    // and V8 keeps fewer values live across the block.
    const xLow = `(v128.load32_splat offset=${4 * k} align=1 (local.get $xp))`;
    const xHigh = `(v128.load32_splat offset=${16 + 4 * k} align=1 (local.get $xp))`;
    if (variant === 'relaxed-simd') lines.push(`(local.set $xl ${xLow}) (local.set $xh ${xHigh})`);
    else lines.push(`(local.set $xl (i16x8.extend_low_i8x16_s ${xLow})) (local.set $xh (i16x8.extend_low_i8x16_s ${xHigh}))`);
    lines.push(loadSlice(k));
    const [lo, hi] = [LOW_NIBBLES, HIGH_NIBBLES];
    const add = (into: string, value: string) =>
      k === 0
        ? `(local.set $${into} ${value})`
        : `(local.set $${into} (${variant === 'relaxed-simd' ? 'i16x8' : 'i32x4'}.add (local.get $${into}) ${value}))`;
    if (variant === 'relaxed-simd') {
      lines.push(
        add(
          'pairs',
          `(i16x8.add (i16x8.relaxed_dot_i8x16_i7x16_s (local.get $xl) ${lo}) (i16x8.relaxed_dot_i8x16_i7x16_s (local.get $xh) ${hi}))`,
        ),
      );
    } else {
      // Rows 0–1 in $pairs, rows 2–3 in $pairsHigh: two i32 lanes per row until the end.
      lines.push(`(local.set $lo ${lo}) (local.set $hi ${hi})`);
      const dots = (half: 'low' | 'high') =>
        `(i32x4.add (i32x4.dot_i16x8_s (local.get $xl) (i16x8.extend_${half}_i8x16_u (local.get $lo)))
                   (i32x4.dot_i16x8_s (local.get $xh) (i16x8.extend_${half}_i8x16_u (local.get $hi))))`;
      lines.push(add('pairs', dots('low')), add('pairsHigh', dots('high')));
    }
  }
  return lines.join('\n          ');
};

/**
 * The relaxed-SIMD group block for two activation rows (the second's records `nb` records after the
 * first's): each slice is loaded and split into nibbles once and meets both rows; the scales too.
 */
const q4GroupDotPair = (nb: number): string => {
  const second = nb * ACTIVATION_RECORD_BYTES;
  const lines: string[] = [];
  for (let k = 0; k < 4; k++) {
    lines.push(loadSlice(k), `(local.set $lo ${LOW_NIBBLES})`, `(local.set $hi ${HIGH_NIBBLES})`);
    for (const [pairs, base] of [
      ['pairs', 0],
      ['pairsHigh', second],
    ] as const) {
      const dots = `(i16x8.add
        (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load32_splat offset=${base + 4 * k} align=1 (local.get $xp)) (local.get $lo))
        (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load32_splat offset=${base + 16 + 4 * k} align=1 (local.get $xp)) (local.get $hi)))`;
      lines.push(k === 0 ? `(local.set $${pairs} ${dots})` : `(local.set $${pairs} (i16x8.add (local.get $${pairs}) ${dots}))`);
    }
  }
  lines.push(`(local.set $xl ${groupScales(0)})`);
  for (const [acc, pairs, base] of [
    ['acc0', 'pairs', 0],
    ['acc1', 'pairsHigh', second],
  ] as const) {
    const sums = `(i32x4.sub (i32x4.dot_i16x8_s (local.get $${pairs}) (local.get $ones)) (v128.load32_splat offset=${base + BLOCK + 4} (local.get $xp)))`;
    lines.push(
      `(local.set $${acc} (f32x4.add (local.get $${acc}) (f32x4.mul (f32x4.convert_i32x4_s ${sums}) (f32x4.mul (local.get $xl) (v128.load32_splat offset=${base + BLOCK} (local.get $xp))))))`,
    );
  }
  return lines.join('\n              ');
};

/**
 * Q4_0 in the interleaved layout, one group of four rows per pass of the block loop. (Two groups
 * sharing the activation loads need more registers than x64 has: V8 then spills more than it saves.)
 */
const q4Gemm = (cols: number, variant: KernelVariant): string => {
  const nb = cols / BLOCK;
  const bandRowBytes = nb * BLOCK_BYTES.q4_0;
  const sums = variant === 'relaxed-simd' ? `(i32x4.dot_i16x8_s (local.get $pairs) (local.get $ones))` : rowSums('pairs', 'pairsHigh');
  return gemmFrame(gemmName('q4_0', cols), nb, Q4_0X4_ROWS, {
    locals: `(local $pairs v128) (local $pairsHigh v128) (local $lo v128) (local $hi v128) (local $xl v128) (local $xh v128)
    (local $band i32) (local $advance i32)`,
    // The group's first block: its band's, then its place among the band's groups; a block column
    // later, past every group of the band (four, or fewer in a last short band).
    start: `(local.set $band (i32.and (local.get $row) (i32.const -${Q4_0X4_BAND_ROWS})))
        (local.set $p (i32.add (local.get $w) (i32.add (i32.mul (local.get $band) (i32.const ${bandRowBytes}))
          (i32.mul (i32.shr_u (i32.sub (local.get $row) (local.get $band)) (i32.const 2)) (i32.const ${Q4_0X4_GROUP_BYTES})))))
        (local.set $advance (i32.mul (i32.const ${Q4_0X4_GROUP_BYTES})
          (select (i32.const 4) (i32.shr_u (i32.sub (local.get $n) (local.get $band)) (i32.const 2))
            (i32.ge_u (i32.sub (local.get $n) (local.get $band)) (i32.const ${Q4_0X4_BAND_ROWS})))))`,
    blocks: `${q4GroupDot(variant)}
          ${accumulate('acc0', `(i32x4.sub ${sums} ${OFFSET})`, groupScales(0))}`,
    advance: '(local.get $advance)',
    store: `(v128.store align=4 (local.get $at) (local.get $acc0))`,
    ...(variant === 'relaxed-simd' && {
      pair: {
        blocks: q4GroupDotPair(nb),
        store: `(v128.store align=4 (local.get $at) (local.get $acc0))
            (v128.store align=4 (i32.add (local.get $at) (i32.shl (local.get $n) (i32.const 2))) (local.get $acc1))`,
      },
    }),
  });
};

/** gemm(w, row, rowEnd, m, x, out, n) for `format` over rows of `cols` inputs (see `gemmFrame`). */
const gemm = (format: BlockFormat, cols: number, variant: KernelVariant): string =>
  format === 'q4_0' ? q4Gemm(cols, variant) : q8Gemm(cols);

// ── the activation between the products ───────────────────────────────────────────────────────

/**
 * exp(x) in float32 by Cephes' expf: x = n·ln 2 + r (ln 2 split in two so r is exact), a degree-5
 * polynomial for e^r, then 2^n through the exponent bits. x is clamped to ±EXP_LIMIT so 2^n stays
 * a normal float. Every step is one float32 operation, in this order, in the kernel and in
 * `expScalar`, so the two agree bit for bit (≤ 1 ulp from the true value).
 */
const EXP_LIMIT = 87.3;
const LOG2E = Math.LOG2E;
const LN2_HIGH = 0.693359375;
const LN2_LOW = -2.1219444e-4;
const EXP_POLYNOMIAL = [1.98756915e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1];

const f32Splat = (value: number) => `(f32x4.splat (f32.const ${value}))`;

/** The WAT for exp of the f32x4 in local $e, into $e (locals $n, $r, $y). */
const EXP_TEXT = `
    (local.set $e (f32x4.min (f32x4.max (local.get $e) ${f32Splat(-EXP_LIMIT)}) ${f32Splat(EXP_LIMIT)}))
    (local.set $n (f32x4.floor (f32x4.add (f32x4.mul (local.get $e) ${f32Splat(LOG2E)}) ${f32Splat(0.5)})))
    (local.set $r (f32x4.sub (f32x4.sub (local.get $e) (f32x4.mul (local.get $n) ${f32Splat(LN2_HIGH)})) (f32x4.mul (local.get $n) ${f32Splat(LN2_LOW)})))
    (local.set $y ${f32Splat(EXP_POLYNOMIAL[0]!)})
    ${EXP_POLYNOMIAL.slice(1)
      .map((c) => `(local.set $y (f32x4.add (f32x4.mul (local.get $y) (local.get $r)) ${f32Splat(c)}))`)
      .join('\n    ')}
    (local.set $y (f32x4.add (f32x4.add (f32x4.mul (local.get $y) (f32x4.mul (local.get $r) (local.get $r))) (local.get $r)) ${f32Splat(1)}))
    (local.set $e (f32x4.mul (local.get $y)
      (i32x4.shl (i32x4.add (i32x4.trunc_sat_f32x4_s (local.get $n)) (v128.const i32x4 127 127 127 127)) (i32.const 23))))`;

/**
 * swiglu(out, hidden, ffn, m): for activation rows i < m, hidden[i·ffn + c] =
 * silu(gate) · up with gate = out[i·2ffn + c], up = out[i·2ffn + ffn + c] (the w13 product's
 * rows), silu(g) = g / (1 + exp(−g)).
 */
const SWIGLU_TEXT = `
  (func (export "swiglu") (param $out i32) (param $hidden i32) (param $ffn i32) (param $m i32)
    (local $i i32) (local $c i32) (local $gate i32) (local $up i32) (local $to i32)
    (local $g v128) (local $e v128) (local $n v128) (local $r v128) (local $y v128)
    (block $done (loop $rows
      (br_if $done (i32.ge_u (local.get $i) (local.get $m)))
      (local.set $gate (i32.add (local.get $out) (i32.shl (i32.mul (local.get $i) (local.get $ffn)) (i32.const 3))))
      (local.set $up (i32.add (local.get $gate) (i32.shl (local.get $ffn) (i32.const 2))))
      (local.set $to (i32.add (local.get $hidden) (i32.shl (i32.mul (local.get $i) (local.get $ffn)) (i32.const 2))))
      (local.set $c (local.get $ffn))
      (loop $columns
        (local.set $g (v128.load align=4 (local.get $gate)))
        (local.set $e (f32x4.neg (local.get $g)))
        ${EXP_TEXT}
        (v128.store align=4 (local.get $to)
          (f32x4.mul (f32x4.div (local.get $g) (f32x4.add ${f32Splat(1)} (local.get $e))) (v128.load align=4 (local.get $up))))
        (local.set $gate (i32.add (local.get $gate) (i32.const 16)))
        (local.set $up (i32.add (local.get $up) (i32.const 16)))
        (local.set $to (i32.add (local.get $to) (i32.const 16)))
        (br_if $columns (local.tee $c (i32.sub (local.get $c) (i32.const 4)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $rows)))
  )`;

/** i32x4.shuffle byte lanes for f32 lanes [2, 3, 0, 1] and [1, 0, 3, 2] (halves, then neighbours). */
const SWAP_HALVES = pick([2, 3, 0, 1]);
const SWAP_NEIGHBOURS = pick([1, 0, 3, 2]);

/**
 * quantize(values, records, blocks): quantize_row_q8_0 into activation records, as
 * `quantizeActivations` does (rounding half away from zero: truncate, then step away from zero
 * when the dropped fraction is at least one half; the sum adds the stored int8 values).
 */
const QUANTIZE_TEXT = `
  (func (export "quantize") (param $values i32) (param $records i32) (param $blocks i32)
    (local $m v128) (local $scale v128) (local $inverse v128) (local $sum v128) (local $q v128) (local $t v128)
    (local $i0 v128) (local $i1 v128) (local $i2 v128) (local $i3 v128) (local $i4 v128) (local $i5 v128) (local $i6 v128) (local $i7 v128)
    (block $done (loop $next
      (br_if $done (i32.eqz (local.get $blocks)))
      (local.set $m (f32x4.abs (v128.load align=4 (local.get $values))))
      ${[1, 2, 3, 4, 5, 6, 7].map((k) => `(local.set $m (f32x4.max (local.get $m) (f32x4.abs (v128.load offset=${16 * k} align=4 (local.get $values)))))`).join('\n      ')}
      (local.set $m (f32x4.max (local.get $m) (i8x16.shuffle ${SWAP_HALVES} (local.get $m) (local.get $m))))
      (local.set $m (f32x4.max (local.get $m) (i8x16.shuffle ${SWAP_NEIGHBOURS} (local.get $m) (local.get $m))))
      (local.set $scale (f32x4.div (local.get $m) ${f32Splat(127)}))
      ;; 0 where the scale is 0 or NaN, as \`scale ? 1 / scale : 0\` in the reference.
      (local.set $inverse (v128.and (f32x4.div ${f32Splat(1)} (local.get $scale)) (f32x4.gt (local.get $scale) ${f32Splat(0)})))
      ${[0, 1, 2, 3, 4, 5, 6, 7]
        .map(
          (k) => `(local.set $q (f32x4.mul (v128.load offset=${16 * k} align=4 (local.get $values)) (local.get $inverse)))
      (local.set $t (f32x4.trunc (local.get $q)))
      (local.set $i${k} (i32x4.trunc_sat_f32x4_s (f32x4.add (local.get $t) (v128.and
        (f32x4.ge (f32x4.abs (f32x4.sub (local.get $q) (local.get $t))) ${f32Splat(0.5)})
        (v128.or (v128.and (local.get $q) ${splatI32(0x80000000)}) ${f32Splat(1)})))))`,
        )
        .join('\n      ')}
      (v128.store align=1 (local.get $records)
        (i8x16.narrow_i16x8_s (i16x8.narrow_i32x4_s (local.get $i0) (local.get $i1)) (i16x8.narrow_i32x4_s (local.get $i2) (local.get $i3))))
      (v128.store offset=16 align=1 (local.get $records)
        (i8x16.narrow_i16x8_s (i16x8.narrow_i32x4_s (local.get $i4) (local.get $i5)) (i16x8.narrow_i32x4_s (local.get $i6) (local.get $i7))))
      (local.set $sum (i32x4.add (i32x4.add (i32x4.add (local.get $i0) (local.get $i1)) (i32x4.add (local.get $i2) (local.get $i3)))
                                 (i32x4.add (i32x4.add (local.get $i4) (local.get $i5)) (i32x4.add (local.get $i6) (local.get $i7)))))
      (local.set $sum (i32x4.add (local.get $sum) (i8x16.shuffle ${SWAP_HALVES} (local.get $sum) (local.get $sum))))
      (local.set $sum (i32x4.add (local.get $sum) (i8x16.shuffle ${SWAP_NEIGHBOURS} (local.get $sum) (local.get $sum))))
      (f32.store offset=${BLOCK} align=4 (local.get $records) (f32x4.extract_lane 0 (local.get $scale)))
      (i32.store offset=${BLOCK + 4} align=4 (local.get $records) (i32.shl (i32x4.extract_lane 0 (local.get $sum)) (i32.const 3)))
      (local.set $values (i32.add (local.get $values) (i32.const ${4 * BLOCK})))
      (local.set $records (i32.add (local.get $records) (i32.const ${ACTIVATION_RECORD_BYTES})))
      (local.set $blocks (i32.sub (local.get $blocks) (i32.const 1)))
      (br $next)))
  )`;

/** One module per variant and set of row widths: both formats, each width its own function. */
const kernelText = (variant: KernelVariant, widths: readonly number[]): string =>
  `(module
  (import "env" "memory" (memory 1 ${MAX_PAGES} shared))
  ${FORMATS.flatMap((format) => widths.map((cols) => gemm(format, cols, variant))).join('\n')}
  ${SWIGLU_TEXT}
  ${QUANTIZE_TEXT}
)`;

/** One specialised product (see `gemm`). */
type Gemm = (w: number, row: number, rowEnd: number, m: number, x: number, out: number, n: number) => void;
const FORMATS: readonly BlockFormat[] = ['q4_0', 'q8_0'];

type Wabt = Awaited<ReturnType<typeof wabtInit>>;
let wabt: Promise<Wabt> | null = null;

/** The WebAssembly toolkit, loaded once (it is itself a WebAssembly module). */
function loadWabt(): Promise<Wabt> {
  wabt ??= wabtInit();
  return wabt;
}

function assemble(toolkit: Wabt, variant: KernelVariant, widths: readonly number[]): Uint8Array<ArrayBuffer> {
  const features = { simd: true, threads: true, relaxed_simd: variant === 'relaxed-simd' };
  const parsed = toolkit.parseWat(`block-kernel-${variant}.wat`, kernelText(variant, widths), features);
  try {
    // wabt.js's validate takes the features too (its typings omit the parameter).
    (parsed.validate as (options: typeof features) => void).call(parsed, features);
    return new Uint8Array(parsed.toBinary({}).buffer);
  } finally {
    parsed.destroy();
  }
}

/** The relaxed kernel's bytes are valid here, turning on Node 20's flag first if needed. */
function engineAccepts(bytes: Uint8Array<ArrayBuffer>): boolean {
  if (WebAssembly.validate(bytes)) return true;
  setFlagsFromString('--experimental-wasm-relaxed-simd');
  return WebAssembly.validate(bytes);
}

/** The width the faster variants are checked on. */
const PROBE_COLS = 128;
/** Activation rows in the check: more than one pass of the native kernel's rows. */
const PROBE_ROWS = 5;
/** Output rows in the check: a whole band of interleaved Q4_0 rows and a short one. */
const PROBE_OUTPUT_ROWS = 24;
let relaxedCheck: Promise<string | null> | null = null;
const nativeChecks = new Map<NativeIsa | 'best', Promise<{ gemm: NativeGemm | null; note: string | null }>>();

/** Null where the relaxed variant runs here and agrees bit for bit with the plain one; else why not. */
function relaxedUnavailable(): Promise<string | null> {
  relaxedCheck ??= (async () => {
    const toolkit = await loadWabt();
    const relaxedBytes = assemble(toolkit, 'relaxed-simd', [PROBE_COLS]);
    if (!engineAccepts(relaxedBytes)) return 'this WebAssembly engine has no relaxed SIMD';
    const relaxed = new WebAssembly.Module(relaxedBytes);
    const plain = await moduleFor('simd', [PROBE_COLS]);
    return probeBits('q4_0', (memory) => moduleGemm(relaxed, memory, 'q4_0', PROBE_COLS)) ===
      probeBits('q4_0', (memory) => moduleGemm(plain, memory, 'q4_0', PROBE_COLS))
      ? null
      : 'relaxed SIMD dot products disagree with the exact ones on this engine';
  })();
  return relaxedCheck;
}

/** The native products (on `isa`, or the best this CPU has) where they load and agree bit for bit with the module. */
function checkedNativeGemm(isa?: NativeIsa): Promise<{ gemm: NativeGemm | null; note: string | null }> {
  const key = isa ?? 'best';
  let check = nativeChecks.get(key);
  if (!check) {
    check = (async () => {
      const { gemm, note } = loadNativeGemm(isa);
      if (!gemm) return { gemm, note };
      const plain = await moduleFor('simd', [PROBE_COLS]);
      for (const format of FORMATS) {
        const native = probeBits(format, (memory) => nativeGemm(gemm.product(format), memory, PROBE_COLS));
        if (native !== probeBits(format, (memory) => moduleGemm(plain, memory, format, PROBE_COLS)))
          return { gemm: null, note: `the native ${gemm.isa} ${format} products disagree with the WebAssembly kernel's` };
        if (!nativeExpertAgrees(gemm, format))
          return { gemm: null, note: `the native ${gemm.isa} ${format} experts disagree with the WebAssembly kernel's` };
      }
      return { gemm, note: null };
    })();
    nativeChecks.set(key, check);
  }
  return check;
}

const modules = new Map<string, Promise<WebAssembly.Module>>();

/** The module for `variant` specialised to `widths`, compiled once per process. */
function moduleFor(variant: WasmVariant, widths: readonly number[]): Promise<WebAssembly.Module> {
  const key = `${variant}:${widths.join(',')}`;
  let module = modules.get(key);
  if (!module) {
    module = (async () => new WebAssembly.Module(assemble(await loadWabt(), variant, widths)))();
    modules.set(key, module);
  }
  return module;
}

/** The module's `format` product over `cols` inputs on `memory`. */
function moduleGemm(module: WebAssembly.Module, memory: WebAssembly.Memory, format: BlockFormat, cols: number): Gemm {
  return new WebAssembly.Instance(module, { env: { memory } }).exports[gemmName(format, cols)] as Gemm;
}

/** A native product over `cols` inputs on `memory`, called as the module's export is. */
function nativeGemm(product: NativeProduct, memory: WebAssembly.Memory, cols: number): Gemm {
  const bytes = new Uint8Array(memory.buffer);
  return (w, row, rowEnd, m, x, out, n) => product(bytes, cols, w, row, rowEnd, m, x, out, n);
}

/** A deterministic pseudo-random generator of 24-bit integers (the probes' data). */
function probeRandom(seed: number): () => number {
  let state = seed;
  return () => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    return state >>> 8;
  };
}

/**
 * Random `format` blocks [rows, cols] in the expert files' layout, every scale's high byte
 * `scaleHigh` (a normal fp16 scale, so outputs stay finite and no subnormal slows the kernel).
 */
function probeMatrix(format: BlockFormat, rows: number, cols: number, random: () => number, scaleHigh: number): Uint8Array {
  const nb = cols / BLOCK;
  const bytes = Uint8Array.from({ length: rows * nb * BLOCK_BYTES[format] }, () => random() & 0xff);
  for (let row = 0; row < rows; row++)
    for (let b = 0; b < nb; b++)
      bytes[format === 'q4_0' ? q4_0x4Offset(row, b, 1, nb, rows) : (row * nb + b) * BLOCK_BYTES.q8_0 + 1] = scaleHigh;
  return bytes;
}

/** The output bits of one random `format` product (the same every call) run by `gemmOn`. */
function probeBits(format: BlockFormat, gemmOn: (memory: WebAssembly.Memory) => Gemm): string {
  const rows = PROBE_OUTPUT_ROWS;
  const cols = PROBE_COLS;
  const nb = cols / BLOCK;
  const memory = new WebAssembly.Memory({ initial: 1, maximum: MAX_PAGES, shared: true });
  const random = probeRandom(12345);
  const weights = 0;
  const x = 4096;
  const out = 16384;
  // Scales ≈ 1 (fp16 high byte 0x3c).
  new Uint8Array(memory.buffer).set(probeMatrix(format, rows, cols, random, 0x3c), weights);
  const values = Float32Array.from({ length: PROBE_ROWS * cols }, () => (random() % 2001) / 1000 - 1);
  quantizeActivations(values, 0, PROBE_ROWS, cols, new Uint8Array(memory.buffer, x, PROBE_ROWS * nb * ACTIVATION_RECORD_BYTES));
  gemmOn(memory)(weights, 0, rows, PROBE_ROWS, x, out, rows);
  return Array.from(new Uint32Array(memory.buffer, out, PROBE_ROWS * rows)).join();
}

/** Whether one random `format` expert run natively has the bits of the reference steps (`runBlockExpertScalar`). */
function nativeExpertAgrees(gemm: NativeGemm, format: BlockFormat): boolean {
  const dim = PROBE_COLS;
  const ffn = PROBE_OUTPUT_ROWS * 4;
  const random = probeRandom(987654321);
  // Scales ≈ 1/64 (fp16 high byte 0x24) so the products stay in exp's range.
  const w13 = probeMatrix(format, 2 * ffn, dim, random, 0x24);
  const w2 = probeMatrix(format, dim, ffn, random, 0x24);
  const memory = new Uint8Array(w13.length + w2.length);
  memory.set(w13);
  memory.set(w2, w13.length);
  const x = Float32Array.from({ length: PROBE_ROWS * dim }, () => (random() % 2001) / 1000 - 1);
  const y = new Float32Array(x.length);
  const dims = Int32Array.of(gemm.isaCode, dim, ffn, 1);
  gemm.expertFfn(memory, dims, Uint32Array.of(format === 'q4_0' ? 1 : 0, 0, w13.length, PROBE_ROWS), x, y);
  const weights: ExpertWeights = { format, w13, w2 };
  const reference = runBlockExpertScalar(x, PROBE_ROWS, weights, dim, ffn);
  return new Uint32Array(y.buffer).join() === new Uint32Array(reference.buffer).join();
}

/** Every variant that runs here (its check passed), fastest first. */
export async function runnableKernelVariants(): Promise<KernelVariant[]> {
  const natives: KernelVariant[] = [];
  for (const isa of ['avx512vnni', 'avx2'] as const) if ((await checkedNativeGemm(isa)).gemm) natives.push(`native-${isa}`);
  return [...natives, ...((await relaxedUnavailable()) === null ? (['relaxed-simd'] as const) : []), 'simd'];
}

/** Which variant `BlockExpertKernel.create` picks by default, and why not a faster one. */
export async function defaultKernelVariant(): Promise<{ variant: KernelVariant; note: string | null }> {
  const native = await checkedNativeGemm();
  if (native.gemm) return { variant: `native-${native.gemm.isa}`, note: null };
  const relaxed = await relaxedUnavailable();
  return { variant: relaxed === null ? 'relaxed-simd' : 'simd', note: [native.note, relaxed].filter(Boolean).join('; ') || null };
}

// ── the reference ──────────────────────────────────────────────────────────────────────────────

/** Views of activation records (`into.byteOffset` a multiple of 4). */
function recordViews(records: Uint8Array) {
  const { buffer, byteOffset, byteLength } = records;
  return {
    q: new Int8Array(buffer, byteOffset, byteLength),
    words: new Float32Array(buffer, byteOffset, byteLength >>> 2),
    ints: new Int32Array(buffer, byteOffset, byteLength >>> 2),
  };
}

/**
 * quantize_row_q8_0 in fp32 on `rows` rows of `cols` values from `values` at `from`, into
 * activation records (`into`, which may be a view into a kernel arena).
 */
export function quantizeActivations(values: Float32Array, from: number, rows: number, cols: number, into: Uint8Array): void {
  const { q, words, ints } = recordViews(into);
  const blocks = (rows * cols) / BLOCK;
  const recordWords = ACTIVATION_RECORD_BYTES / 4;
  for (let block = 0; block < blocks; block++) {
    const base = from + block * BLOCK;
    const record = block * ACTIVATION_RECORD_BYTES;
    let amax = 0;
    for (let j = 0; j < BLOCK; j++) amax = Math.max(amax, Math.abs(values[base + j]!));
    const scale = Math.fround(amax / 127);
    const inverse = scale ? Math.fround(1 / scale) : 0;
    let sum = 0;
    for (let j = 0; j < BLOCK; j++) {
      const v = Math.fround(values[base + j]! * inverse);
      const rounded = v < 0 ? -Math.round(-v) : Math.round(v); // roundf: half away from zero
      q[record + j] = rounded;
      sum += q[record + j]!; // the stored value (a NaN input stores 0), as the kernel adds them
    }
    words[block * recordWords + BLOCK / 4] = scale;
    ints[block * recordWords + BLOCK / 4 + 1] = 8 * sum;
  }
}

/**
 * The kernel's sums and roundings in plain JS: out[i·n + r] for rows r < n, activation rows i < m.
 * Q4_0 weights are in the expert files' interleaved layout, Q8_0 in GGUF's row order.
 */
export function blockGemmScalar(
  format: BlockFormat,
  weights: Uint8Array,
  n: number,
  cols: number,
  m: number,
  x: Uint8Array,
  out: Float32Array,
): void {
  const nb = cols / BLOCK;
  const size = BLOCK_BYTES[format];
  const fround = Math.fround;
  const { q, words, ints } = recordViews(x);
  const recordWords = ACTIVATION_RECORD_BYTES / 4;
  for (let r = 0; r < n; r++) {
    for (let i = 0; i < m; i++) {
      let acc = 0;
      for (let b = 0; b < nb; b++) {
        const record = i * nb + b;
        const xb = record * ACTIVATION_RECORD_BYTES;
        let sum = 0;
        let dw: number;
        if (format === 'q4_0') {
          const scale = q4_0x4Offset(r, b, 0, nb, n);
          dw = fromFloat16Bits(weights[scale]! | (weights[scale + 1]! << 8));
          for (let j = 0; j < BLOCK / 2; j += 4) {
            const slice = q4_0x4Offset(r, b, 2 + j, nb, n);
            for (let t = 0; t < 4; t++) {
              const byte = weights[slice + t]!;
              sum += q[xb + j + t]! * (byte & 0x0f) + q[xb + j + t + 16]! * (byte >>> 4);
            }
          }
          sum -= ints[record * recordWords + BLOCK / 4 + 1]!;
        } else {
          const at = (r * nb + b) * size;
          dw = fromFloat16Bits(weights[at]! | (weights[at + 1]! << 8));
          for (let j = 0; j < BLOCK; j++) sum += q[xb + j]! * ((weights[at + 2 + j]! << 24) >> 24);
        }
        acc = fround(acc + fround(sum * fround(dw * words[record * recordWords + BLOCK / 4]!)));
      }
      out[i * n + r] = acc;
    }
  }
}

// ── the SwiGLU around the two products ─────────────────────────────────────────────────────────

/** The kernel's exp, one float32 operation at a time (see EXP_TEXT). */
export function expScalar(x: number): number {
  const f = Math.fround;
  const clamped = Math.min(Math.max(f(x), f(-EXP_LIMIT)), f(EXP_LIMIT));
  const n = Math.floor(f(f(clamped * f(LOG2E)) + 0.5));
  const r = f(f(clamped - f(n * f(LN2_HIGH))) - f(n * f(LN2_LOW)));
  let y = f(EXP_POLYNOMIAL[0]!);
  for (const c of EXP_POLYNOMIAL.slice(1)) y = f(f(y * r) + f(c));
  y = f(f(f(y * f(r * r)) + r) + 1);
  return f(y * 2 ** n);
}

/** The kernel's swiglu export in plain JS: hidden = silu(gate) · up per row (see SWIGLU_TEXT). */
function swigluScalar(out: Float32Array, hidden: Float32Array, ffn: number, m: number): void {
  const f = Math.fround;
  for (let i = 0; i < m; i++) {
    for (let c = 0; c < ffn; c++) {
      const gate = out[i * 2 * ffn + c]!;
      hidden[i * ffn + c] = f(f(gate / f(1 + expScalar(-gate))) * out[i * 2 * ffn + ffn + c]!);
    }
  }
}

interface Scratch {
  /** Activation records (ACTIVATION_RECORD_BYTES per block). */
  x: Uint8Array;
  out: Float32Array;
  hidden: Float32Array;
  /** Rows of the expert's input, where the kernel quantises them from. */
  input: Float32Array;
}

/**
 * The steps of one expert, in the kernel (WebAssembly exports) or in plain JS (the reference):
 *   quantize  m rows of `cols` values of `values` from `from` into `scratch.x`
 *   product   x · matrixᵀ for n output rows into `scratch.out`
 *   activate  hidden[0 … m·ffn) = silu(gate) · up from the w13 product in `out`
 */
interface ExpertSteps {
  scratch: Scratch;
  quantize(values: Float32Array, from: number, m: number, cols: number): void;
  product(matrix: Uint8Array, n: number, cols: number, m: number): void;
  activate(m: number): void;
}

/** The steps that never leave this thread, over one scratch. */
type LocalSteps = Omit<ExpertSteps, 'product'>;

/** y = w2(silu(w1·x) ⊙ w3·x) for `rows` rows of x ([rows, dim]), ROWS_PER_PASS rows per pass. */
function swiglu(steps: ExpertSteps, x: Float32Array, rows: number, weights: ExpertWeights, dim: number, ffn: number): Float32Array {
  const y = new Float32Array(rows * dim);
  const { out, hidden } = steps.scratch;
  for (let first = 0; first < rows; first += ROWS_PER_PASS) {
    const m = Math.min(ROWS_PER_PASS, rows - first);
    steps.quantize(x, first * dim, m, dim);
    steps.product(weights.w13, 2 * ffn, dim, m);
    steps.activate(m);
    steps.quantize(hidden, 0, m, ffn);
    steps.product(weights.w2, dim, ffn, m);
    y.set(out.subarray(0, m * dim), first * dim);
  }
  return y;
}

/** Scratch sizes: activation record bytes, and output, hidden and input values. */
function scratchFor(dim: number, ffn: number): { x: number; out: number; hidden: number; input: number } {
  return {
    x: ((ROWS_PER_PASS * Math.max(dim, ffn)) / BLOCK) * ACTIVATION_RECORD_BYTES,
    out: ROWS_PER_PASS * Math.max(2 * ffn, dim),
    hidden: ROWS_PER_PASS * ffn,
    input: ROWS_PER_PASS * dim,
  };
}

/** The whole expert in plain JS: bit-identical to `BlockExpertKernel.run` (tested). */
export function runBlockExpertScalar(x: Float32Array, rows: number, weights: ExpertWeights, dim: number, ffn: number): Float32Array {
  const size = scratchFor(dim, ffn);
  const scratch: Scratch = {
    x: new Uint8Array(size.x),
    out: new Float32Array(size.out),
    hidden: new Float32Array(size.hidden),
    input: new Float32Array(size.input),
  };
  return swiglu(
    {
      scratch,
      quantize: (values, from, m, cols) => quantizeActivations(values, from, m, cols, scratch.x),
      product: (matrix, n, cols, m) => blockGemmScalar(weights.format, matrix, n, cols, m, scratch.x, scratch.out),
      activate: (m) => swigluScalar(scratch.out, scratch.hidden, ffn, m),
    },
    x,
    rows,
    weights,
    dim,
    ffn,
  );
}

// ── arenas: the expert cache's buffers inside shared wasm memories ─────────────────────────────

/** `value` rounded up to a multiple of `alignment`. */
export function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

/** One shared wasm memory: a small scratch (activations, outputs) then fixed-size page-in buffers. */
class Arena {
  readonly memory: WebAssembly.Memory;
  /** The whole memory's bytes, as the native experts take it (its size is fixed). */
  readonly bytes: Uint8Array;
  /** The module's products by their export names (`gemmName`). */
  readonly gemm: Record<string, Gemm>;
  /**
   * This thread's quantisation and SwiGLU over each scratch (the first, and a second for an expert
   * the helper thread runs whole while this thread runs another); the module works on addresses.
   */
  readonly local: { first: LocalSteps; second: LocalSteps };
  private readonly free: number[] = [];
  private readonly stride: number;
  private readonly buffersStart: number;
  constructor(
    readonly id: number,
    module: WebAssembly.Module,
    layout: ArenaLayout,
    count: number,
    ffn: number,
  ) {
    this.buffersStart = layout.buffersStart;
    this.stride = layout.stride;
    const pages = Math.ceil((this.buffersStart + count * this.stride) / PAGE);
    this.memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
    this.bytes = new Uint8Array(this.memory.buffer);
    const exports = new WebAssembly.Instance(module, { env: { memory: this.memory } }).exports;
    this.gemm = { ...(exports as Record<string, Gemm>) };
    const { buffer } = this.memory;
    const swiglu = exports.swiglu as (out: number, hidden: number, ffn: number, m: number) => void;
    const quantize = exports.quantize as (values: number, records: number, blocks: number) => void;
    const localSteps = (at: ScratchOffsets): LocalSteps => {
      const scratch: Scratch = {
        x: new Uint8Array(buffer, at.x, layout.size.x),
        out: new Float32Array(buffer, at.out, layout.size.out),
        hidden: new Float32Array(buffer, at.hidden, layout.size.hidden),
        input: new Float32Array(buffer, at.input, layout.size.input),
      };
      return {
        scratch,
        activate: (m) => swiglu(at.out, at.hidden, ffn, m),
        quantize: (values, from, m, cols) => {
          // The hidden values are already in this memory; the expert's input is copied in.
          let address = at.hidden + 4 * from;
          if (values !== scratch.hidden) {
            scratch.input.set(values.subarray(from, from + m * cols));
            address = at.input;
          }
          quantize(address, at.x, (m * cols) / BLOCK);
        },
      };
    };
    this.local = { first: localSteps(layout.first), second: localSteps(layout.second) };
    for (let slot = count - 1; slot >= 0; slot--) this.free.push(slot);
  }

  /** A whole slot: the image's bytes and the tail block a direct read may fill. */
  allocate(): Uint8Array | null {
    const slot = this.free.pop();
    return slot === undefined ? null : new Uint8Array(this.memory.buffer, this.buffersStart + slot * this.stride, this.stride);
  }

  owns(bytes: Uint8Array): boolean {
    return bytes.buffer === this.memory.buffer;
  }

  release(bytes: Uint8Array): void {
    this.free.push((bytes.byteOffset - this.buffersStart) / this.stride);
  }
}

/** Where one scratch's parts start in an arena. */
interface ScratchOffsets {
  x: number;
  out: number;
  hidden: number;
  input: number;
}

interface ArenaLayout {
  size: ReturnType<typeof scratchFor>;
  first: ScratchOffsets;
  second: ScratchOffsets;
  buffersStart: number;
  /** Size and distance of buffers: an image rounded up to BUFFER_ALIGNMENT (a direct read may fill the tail block). */
  stride: number;
}

function arenaLayout(dim: number, ffn: number, bufferBytes: number): ArenaLayout {
  const size = scratchFor(dim, ffn);
  const scratchAt = (x: number): ScratchOffsets => {
    const out = alignUp(x + size.x, 64);
    const hidden = alignUp(out + 4 * size.out, 64);
    const input = alignUp(hidden + 4 * size.hidden, 64);
    return { x, out, hidden, input };
  };
  const first = scratchAt(0);
  const second = scratchAt(alignUp(first.input + 4 * size.input, 64));
  const buffersStart = alignUp(second.input + 4 * size.input, BUFFER_ALIGNMENT);
  return { size, first, second, buffersStart, stride: directReadCapacity(bufferBytes) };
}

// ── sharing a product with a helper thread ─────────────────────────────────────────────────────

/**
 * The job kind of a whole expert: one chunk, the expert's SwiGLU on the arena's second scratch;
 * its arguments are arena, WHOLE_EXPERT, w13, w2, m, format (index into FORMATS). Other jobs are
 * products: arena, product (index into `names`), w, n, m, x, out, in chunks of CHUNK_ROWS rows.
 */
const WHOLE_EXPERT = -1;

const HELPER_PRELUDE = `
const { receiveMessageOnPort } = require('node:worker_threads');
const { module, names, port, second, dim, ffn } = workerData;
const arenas = new Map();
const receive = () => {
  const received = receiveMessageOnPort(port);
  if (received) {
    const { id, memory } = received.message;
    const exports = new WebAssembly.Instance(module, { env: { memory } }).exports;
    arenas.set(id, { products: names.map((name) => exports[name]), swiglu: exports.swiglu, quantize: exports.quantize });
  }
  return received !== undefined;
};
// The same steps, in the same order, as swiglu() in block-kernel.ts, for m ≤ one pass of rows.
const wholeExpert = (arena, w13, w2, m, format) => {
  arena.quantize(second.input, second.x, (m * dim) / ${BLOCK});
  arena.products[2 * format](w13, 0, 2 * ffn, m, second.x, second.out, 2 * ffn);
  arena.swiglu(second.out, second.hidden, ffn, m);
  arena.quantize(second.hidden, second.x, (m * ffn) / ${BLOCK});
  arena.products[2 * format + 1](w2, 0, dim, m, second.x, second.out, dim);
};`;

const HELPER_RUN_CHUNK = `
const [id, product, w, n, m, x, out] = args;
// An arena posted just before this job may still be on its way.
while (receive());
for (let spins = 0; !arenas.has(id) && spins < 1e7; spins++) receive();
const arena = arenas.get(id);
if (product === ${WHOLE_EXPERT}) wholeExpert(arena, w, n, m, x);
else arena.products[product](w, chunk * ${CHUNK_ROWS}, Math.min(n, (chunk + 1) * ${CHUNK_ROWS}), m, x, out, n);`;

/** The expert kernel's helper thread (helper-thread.ts), which learns of new arenas over a port. */
class Helper {
  private readonly thread: HelperThread;
  private readonly port: MessagePort;

  /**
   * `names`: the products' export names, in the order the jobs index them (per format, its product over dim inputs, then
   * over ffn inputs). `second`: the arenas' second scratch.
   */
  constructor(
    module: WebAssembly.Module,
    private readonly names: readonly string[],
    second: ScratchOffsets,
    dim: number,
    ffn: number,
  ) {
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    this.thread = new HelperThread({
      owner: 'the expert kernel',
      prelude: HELPER_PRELUDE,
      runChunk: HELPER_RUN_CHUNK,
      workerData: { module, names, port: port2, second, dim, ffn },
      transferList: [port2],
    });
  }

  addArena(arena: Arena): void {
    this.port.postMessage({ id: arena.id, memory: arena.memory });
  }

  /** The product over all n output rows, chunks shared with the helper thread. */
  share(arena: Arena, name: string, w: number, n: number, m: number): void {
    const x = arena.local.first.scratch.x.byteOffset;
    const out = arena.local.first.scratch.out.byteOffset;
    const gemm = arena.gemm[name]!;
    this.thread.share([arena.id, this.names.indexOf(name), w, n, m, x, out], Math.ceil(n / CHUNK_ROWS), (chunk) =>
      gemm(w, chunk * CHUNK_ROWS, Math.min(n, (chunk + 1) * CHUNK_ROWS), m, x, out, n),
    );
  }

  /**
   * Two experts at once: `second` whole on the helper thread (its input already in the arena's
   * second scratch), while `first` runs here; if the helper has not taken its job by then, it
   * runs here too. Each expert's steps are those of a lone run, so the outputs are the same bits.
   */
  together(arena: Arena, format: BlockFormat, second: ExpertWeights, m: number, first: () => void, runSecondHere: () => void): void {
    const args = [arena.id, WHOLE_EXPERT, second.w13.byteOffset, second.w2.byteOffset, m, FORMATS.indexOf(format)];
    this.thread.together(args, first, runSecondHere);
  }

  async terminate(): Promise<void> {
    this.port.close();
    await this.thread.terminate();
  }
}

// ── the kernel the expert provider uses ────────────────────────────────────────────────────────

export interface BlockExpertKernelOptions {
  dim: number;
  ffn: number;
  /** Size of one expert file image; buffers are this rounded up to BUFFER_ALIGNMENT. */
  bufferBytes: number;
  /** Buffers the first arenas are sized for (the cache's experts plus loads in flight); more get a new arena. */
  expectedBuffers: number;
  /** 2: this thread plus a helper thread; 1: this thread alone. */
  threads: number;
  /** Default: the fastest variant that runs here and is exact (see `defaultKernelVariant`). */
  variant?: KernelVariant;
}

/** The row widths the products are specialised to: dim (w13's inputs) and ffn (w2's). */
const rowWidths = ({ dim, ffn }: { dim: number; ffn: number }) => [...new Set([dim, ffn])];

/** One expert's rows for `runTogether`: x [rows, dim] and the expert's weights in our buffers. */
export interface ExpertInput {
  x: Float32Array;
  rows: number;
  weights: ExpertWeights;
}

/**
 * Runs block-quantised experts from the expert cache's buffers, which it allocates inside its
 * arenas (the kernel can only address its own memory; an arena is one shared wasm memory of
 * ≤ 4 GiB). Each `run` is synchronous from start to end, so one scratch per arena suffices even
 * when forward passes overlap.
 */
export class BlockExpertKernel implements ExpertBufferPool {
  private readonly arenas: Arena[] = [];
  private readonly helper: Helper | null;
  private readonly layout: ArenaLayout;
  private provisioned = 0;

  private constructor(
    private readonly options: BlockExpertKernelOptions,
    private readonly module: WebAssembly.Module,
    private readonly native: NativeGemm | null,
    readonly variant: KernelVariant,
  ) {
    const { dim, ffn } = options;
    if (dim % BLOCK !== 0 || ffn % BLOCK !== 0)
      throw new RangeError(`block experts need dim and ffn multiples of ${BLOCK}, not ${dim} and ${ffn}`);
    this.layout = arenaLayout(dim, ffn, options.bufferBytes);
    const names = FORMATS.flatMap((format) => [dim, ffn].map((cols) => gemmName(format, cols)));
    // Native experts share their work with the addon's own helper thread instead.
    this.helper = options.threads > 1 && !native ? new Helper(module, names, this.layout.second, dim, ffn) : null;
  }

  static async create(options: BlockExpertKernelOptions): Promise<BlockExpertKernel> {
    const variant = options.variant ?? (await defaultKernelVariant()).variant;
    let native: NativeGemm | null = null;
    if (variant.startsWith('native-')) {
      const isa = variant.slice('native-'.length) as NativeIsa;
      const check = await checkedNativeGemm(isa);
      if (!check.gemm) throw new Error(`the native ${isa} expert kernel cannot run here: ${check.note}`);
      native = check.gemm;
    }
    const relaxed = await relaxedUnavailable();
    if (variant === 'relaxed-simd' && relaxed !== null) throw new Error(`the relaxed SIMD expert kernel cannot run here: ${relaxed}`);
    // A native variant only uses the module for its arenas' memories.
    const wasm: WasmVariant = variant === 'simd' || (native && relaxed !== null) ? 'simd' : 'relaxed-simd';
    return new BlockExpertKernel(options, await moduleFor(wasm, rowWidths(options)), native, variant);
  }

  allocate(): Uint8Array {
    for (const arena of this.arenas) {
      const buffer = arena.allocate();
      if (buffer) return buffer;
    }
    const fit = Math.max(0, Math.floor((MAX_PAGES * PAGE - this.layout.buffersStart) / this.layout.stride));
    const count = Math.max(1, Math.min(fit, this.options.expectedBuffers - this.provisioned));
    const arena = new Arena(this.arenas.length, this.module, this.layout, count, this.options.ffn);
    this.arenas.push(arena);
    this.helper?.addArena(arena);
    this.provisioned += count;
    return arena.allocate()!;
  }

  release(buffer: Uint8Array): void {
    this.arenas.find((arena) => arena.owns(buffer))?.release(buffer);
  }

  /** y = w2(silu(w1·x) ⊙ w3·x) for `rows` rows of x [rows, dim]; `weights` must live in one of our buffers. */
  run(x: Float32Array, rows: number, weights: ExpertWeights): Float32Array {
    const arena = this.arenaOf(weights);
    if (this.native) return this.runNative(arena, [{ x, rows, weights }])[0]!;
    return swiglu(this.steps(arena, weights.format, 'shared'), x, rows, weights, this.options.dim, this.options.ffn);
  }

  /**
   * Two experts (a decode step's top-2 at one token, say), one per thread: the helper runs the
   * second whole while this thread runs the first, with no hand-off per product — small experts
   * lost up to a third of their time to those. Each expert takes the steps of a lone `run`, so
   * the outputs are the same bits. Natively, `runMany`'s one call; in WebAssembly, two `run`s
   * without a helper, across arenas, or beyond one pass of rows.
   */
  runTogether(first: ExpertInput, second: ExpertInput): [Float32Array, Float32Array] {
    if (this.native) return this.runMany([first, second]) as [Float32Array, Float32Array];
    const { dim, ffn } = this.options;
    const arena = this.arenaOf(first.weights);
    if (!this.helper || this.arenaOf(second.weights) !== arena || Math.max(first.rows, second.rows) > TOGETHER_MAX_ROWS) {
      return [this.run(first.x, first.rows, first.weights), this.run(second.x, second.rows, second.weights)];
    }
    arena.local.second.scratch.input.set(second.x.subarray(0, second.rows * dim));
    let firstOut: Float32Array = new Float32Array(0);
    this.helper.together(
      arena,
      second.weights.format,
      second.weights,
      second.rows,
      () => {
        firstOut = swiglu(this.steps(arena, first.weights.format, 'alone'), first.x, first.rows, first.weights, dim, ffn);
      },
      () => void swiglu(this.steps(arena, second.weights.format, 'second'), second.x, second.rows, second.weights, dim, ffn),
    );
    return [firstOut, arena.local.second.scratch.out.slice(0, second.rows * dim)];
  }

  /**
   * Several experts (a layer's routed ones), each with the bits of a lone `run`: natively in one
   * call per arena (whole experts on both threads), else two at a time (`runTogether`).
   */
  runMany(experts: readonly ExpertInput[]): Float32Array[] {
    const outputs: Float32Array[] = [];
    if (!this.native) {
      for (let k = 0; k < experts.length; k += 2) {
        const [first, second] = [experts[k]!, experts[k + 1]];
        if (second) outputs.push(...this.runTogether(first, second));
        else outputs.push(this.run(first.x, first.rows, first.weights));
      }
      return outputs;
    }
    const byArena = new Map<Arena, number[]>();
    experts.forEach((e, k) => {
      const arena = this.arenaOf(e.weights);
      const indices = byArena.get(arena);
      if (indices) indices.push(k);
      else byArena.set(arena, [k]);
    });
    for (const [arena, indices] of byArena) {
      const ys = this.runNative(
        arena,
        indices.map((k) => experts[k]!),
      );
      indices.forEach((k, i) => {
        outputs[k] = ys[i]!;
      });
    }
    return outputs;
  }

  /** Experts whose weights all live in `arena`, in one native call (two threads: whole experts per thread). */
  private runNative(arena: Arena, experts: readonly ExpertInput[]): Float32Array[] {
    const { dim, ffn, threads } = this.options;
    const native = this.native!;
    const table = new Uint32Array(4 * experts.length);
    let rows = 0;
    experts.forEach((e, k) => {
      table.set([e.weights.format === 'q4_0' ? 1 : 0, e.weights.w13.byteOffset, e.weights.w2.byteOffset, e.rows], 4 * k);
      rows += e.rows;
    });
    // The experts' rows one after the other: a lone expert's as they are.
    const lone = experts.length === 1 && experts[0]!.x.length === rows * dim;
    const x = lone ? experts[0]!.x : new Float32Array(rows * dim);
    let at = 0;
    for (const e of lone ? [] : experts) {
      x.set(e.x.subarray(0, e.rows * dim), at);
      at += e.rows * dim;
    }
    const y = new Float32Array(rows * dim);
    native.expertFfn(arena.bytes, Int32Array.of(native.isaCode, dim, ffn, threads > 1 ? 2 : 1), table, x, y);
    at = 0;
    return experts.map((e) => {
      const out = y.subarray(at, at + e.rows * dim);
      at += e.rows * dim;
      return out;
    });
  }

  private arenaOf(weights: ExpertWeights): Arena {
    const arena = this.arenas.find((candidate) => candidate.owns(weights.w13));
    if (!arena?.owns(weights.w2)) {
      throw new RangeError("expert weights outside the kernel's arenas (allocate page-in buffers with BlockExpertKernel.allocate)");
    }
    return arena;
  }

  /**
   * An expert's steps on `arena`: on its first scratch with products shared with the helper
   * ('shared') or on this thread ('alone'), or on its second scratch on this thread ('second').
   */
  private steps(arena: Arena, format: BlockFormat, mode: 'shared' | 'alone' | 'second'): ExpertSteps {
    const local = mode === 'second' ? arena.local.second : arena.local.first;
    const { x, out } = local.scratch;
    return {
      ...local,
      product: (matrix, n, cols, m) => {
        const name = gemmName(format, cols);
        if (mode === 'shared' && this.helper && matrix.byteLength >= SPLIT_MIN_BYTES && n >= 2 * CHUNK_ROWS) {
          this.helper.share(arena, name, matrix.byteOffset, n, m);
        } else {
          arena.gemm[name]!(matrix.byteOffset, 0, n, m, x.byteOffset, out.byteOffset, n);
        }
      },
    };
  }

  async dispose(): Promise<void> {
    await this.helper?.terminate();
  }
}
