/**
 * The block formats of quantised matrices: GGUF's Q4_0 and Q8_0, byte for byte, so a GGUF file's
 * blocks can be copied in unchanged and our files read by anything that reads those blocks.
 *
 * A matrix is row-major [rows (outputs), cols (inputs)]; each row is cols/32 blocks along the
 * input dimension. Per block:
 *   Q4_0 (18 B): fp16 d, then qs[16]; element j = ((qs[j] & 0xF) − 8)·d, element j+16 = ((qs[j] >> 4) − 8)·d
 *   Q8_0 (34 B): fp16 d, then q[32] int8; element j = q[j]·d
 * The quantisers are ggml's reference ones (quantize_row_q4_0_ref / _q8_0_ref), rounding where
 * llama.cpp's builds and gguf-py round, so the bytes match theirs for the same fp32 input (tested
 * on GGUF files).
 */

export type BlockFormat = 'q4_0' | 'q8_0';

/** Weights per block, along the input dimension. */
export const BLOCK = 32;
export const BLOCK_BYTES: Record<BlockFormat, number> = { q4_0: 2 + BLOCK / 2, q8_0: 2 + BLOCK };

/** Bytes of a [rows, cols] matrix in `format` (cols a multiple of BLOCK). */
export function blockMatrixBytes(format: BlockFormat, rows: number, cols: number): number {
  return rows * (cols / BLOCK) * BLOCK_BYTES[format];
}

// ── fp16 ────────────────────────────────────────────────────────────────────────────────────────

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** fp32 → IEEE half bits, rounding to nearest even (as the F16C instructions ggml uses do). */
export function toFloat16Bits(value: number): number {
  f32[0] = value;
  const bits = u32[0]!;
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  let mantissa = bits & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0); // inf, NaN
  let e = exponent - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow → inf
  if (e <= 0) {
    // Subnormal half (or zero): shift the implicit bit in, round to nearest even.
    if (e < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mantissa & ((1 << shift) - 1);
    let m = mantissa >>> shift;
    if (rest > half || (rest === half && m & 1)) m++;
    return sign | m;
  }
  const rest = mantissa & 0x1fff;
  mantissa >>>= 13;
  if (rest > 0x1000 || (rest === 0x1000 && mantissa & 1)) {
    mantissa++;
    if (mantissa === 0x400) {
      mantissa = 0;
      e++;
      if (e >= 0x1f) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | mantissa;
}

/** IEEE half bits → number (exact). */
export function fromFloat16Bits(half: number): number {
  const sign = half & 0x8000 ? -1 : 1;
  const exponent = (half >>> 10) & 0x1f;
  const mantissa = half & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

// ── quantisers (ggml's reference ones) ──────────────────────────────────────────────────────────

const fround = Math.fround;

function quantizeBlockQ4_0(x: ArrayLike<number>, from: number, out: Uint8Array, at: number): void {
  let amax = 0;
  let max = 0;
  for (let j = 0; j < BLOCK; j++) {
    const v = x[from + j]!;
    if (amax < Math.abs(v)) {
      amax = Math.abs(v);
      max = v;
    }
  }
  const d = fround(max / -8);
  const id = d ? fround(1 / d) : 0;
  const half = toFloat16Bits(d);
  out[at] = half & 0xff;
  out[at + 1] = half >>> 8;
  for (let j = 0; j < BLOCK / 2; j++) {
    // (int8_t)(x·id + 8.5f) as llama.cpp builds compute it, with a fused multiply-add: the
    // product is not rounded to fp32 first (gguf-py does the same in float64). x·id ∈ [-8, 8],
    // so the truncation is a floor of a non-negative value.
    const lo = Math.min(15, Math.trunc(fround(x[from + j]! * id + 8.5)));
    const hi = Math.min(15, Math.trunc(fround(x[from + j + 16]! * id + 8.5)));
    out[at + 2 + j] = lo | (hi << 4);
  }
}

function quantizeBlockQ8_0(x: ArrayLike<number>, from: number, out: Uint8Array, at: number): void {
  let amax = 0;
  for (let j = 0; j < BLOCK; j++) amax = Math.max(amax, Math.abs(x[from + j]!));
  const d = fround(amax / 127);
  const id = d ? fround(1 / d) : 0;
  const half = toFloat16Bits(d);
  out[at] = half & 0xff;
  out[at + 1] = half >>> 8;
  for (let j = 0; j < BLOCK; j++) {
    const v = fround(x[from + j]! * id);
    // roundf: half away from zero.
    out[at + 2 + j] = (Math.sign(v) * Math.round(Math.abs(v))) & 0xff;
  }
}

/**
 * Quantises `rows` rows of `cols` values (row-major, `values`) into `out` at byte `at`;
 * returns the byte after the last block written.
 */
export function quantizeBlocks(
  format: BlockFormat,
  values: ArrayLike<number>,
  rows: number,
  cols: number,
  out: Uint8Array,
  at = 0,
): number {
  if (cols % BLOCK !== 0) throw new RangeError(`${format} rows need a multiple of ${BLOCK} values, not ${cols}`);
  const quantize = format === 'q4_0' ? quantizeBlockQ4_0 : quantizeBlockQ8_0;
  const size = BLOCK_BYTES[format];
  let offset = at;
  for (let i = 0; i < rows * cols; i += BLOCK, offset += size) quantize(values, i, out, offset);
  return offset;
}

/** The values blocks stand for (what llama.cpp's dequantize_row_* gives), as float32. */
export function dequantizeBlocks(format: BlockFormat, bytes: Uint8Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  const size = BLOCK_BYTES[format];
  for (let block = 0, at = 0; block < (rows * cols) / BLOCK; block++, at += size) {
    const d = fromFloat16Bits(bytes[at]! | (bytes[at + 1]! << 8));
    const base = block * BLOCK;
    if (format === 'q4_0') {
      for (let j = 0; j < BLOCK / 2; j++) {
        const q = bytes[at + 2 + j]!;
        out[base + j] = ((q & 0x0f) - 8) * d;
        out[base + j + 16] = ((q >>> 4) - 8) * d;
      }
    } else {
      for (let j = 0; j < BLOCK; j++) out[base + j] = ((bytes[at + 2 + j]! << 24) >> 24) * d;
    }
  }
  return out;
}

// ── rows interleaved four at a time (the expert files' Q4_0 layout) ─────────────────────────────

/**
 * Q4_0 rows stored four at a time, interleaved (the idea of llama.cpp's block_q4_0x4 repack): for
 * each group of four rows and each block column, the four rows' fp16 scales (8 B), then four
 * slices of 16 B, slice k holding bytes qs[4k … 4k+3] of row 0, then of rows 1, 2, 3. The blocks
 * and their bits are GGUF's; only their order changes. Reading 16 B then gives four bytes of each
 * of four rows, so a SIMD lane can hold one output row and no horizontal sums are needed.
 *
 * Groups come in bands of four (16 rows): a band stores block column 0 of its four groups, then
 * column 1, …, so a kernel working on 16 rows at once reads one sequential stream rather than
 * four (four short streams a few KiB apart read markedly slower). A matrix whose rows are not a
 * multiple of 16 ends in a band of fewer groups.
 */
export const Q4_0X4_ROWS = 4;
/** One block column of a group of four rows: 4 scales, then 4 × 16 B of nibbles. */
export const Q4_0X4_GROUP_BYTES = Q4_0X4_ROWS * BLOCK_BYTES.q4_0;
/** Rows per band: four groups whose block columns alternate. */
export const Q4_0X4_BAND_ROWS = 4 * Q4_0X4_ROWS;

function checkInterleavable(blocks: Uint8Array, rows: number, cols: number, into: Uint8Array): void {
  if (rows % Q4_0X4_ROWS !== 0 || cols % BLOCK !== 0)
    throw new RangeError(`interleaved Q4_0 needs rows a multiple of ${Q4_0X4_ROWS} and cols of ${BLOCK}; got ${rows}×${cols}`);
  const bytes = blockMatrixBytes('q4_0', rows, cols);
  if (blocks.length !== bytes || into.length !== bytes)
    throw new RangeError(`a ${rows}×${cols} Q4_0 matrix is ${bytes} bytes; got ${blocks.length} in, ${into.length} out`);
}

/** Groups in the band holding `row` of a matrix of `rows` rows (4, or fewer in a last short band). */
function q4_0x4BandGroups(row: number, rows: number): number {
  const band = row - (row % Q4_0X4_BAND_ROWS);
  return Math.min(4, (rows - band) / Q4_0X4_ROWS);
}

/**
 * Byte `j` (0 … 17: scale bytes, then qs) of row `row`'s block `b` in the interleaved layout of a
 * matrix of `rows` rows with `blocksPerRow` blocks per row.
 */
export function q4_0x4Offset(row: number, b: number, j: number, blocksPerRow: number, rows: number): number {
  const lane = row % Q4_0X4_ROWS;
  const band = row - (row % Q4_0X4_BAND_ROWS);
  const group = (row - band - lane) / Q4_0X4_ROWS;
  const base = band * blocksPerRow * BLOCK_BYTES.q4_0 + (b * q4_0x4BandGroups(row, rows) + group) * Q4_0X4_GROUP_BYTES;
  if (j < 2) return base + 2 * lane + j;
  const q = j - 2;
  return base + 2 * Q4_0X4_ROWS + 16 * (q >>> 2) + 4 * lane + (q & 3);
}

/** Copies every byte between GGUF's row order and the interleaved layout, one way or the other. */
function permuteQ4_0Rows(from: Uint8Array, rows: number, cols: number, into: Uint8Array, toInterleaved: boolean): Uint8Array {
  checkInterleavable(from, rows, cols, into);
  const nb = cols / BLOCK;
  const size = BLOCK_BYTES.q4_0;
  for (let row = 0; row < rows; row++) {
    for (let b = 0; b < nb; b++) {
      const rowOrder = (row * nb + b) * size;
      for (let j = 0; j < size; j++) {
        const interleaved = q4_0x4Offset(row, b, j, nb, rows);
        if (toInterleaved) into[interleaved] = from[rowOrder + j]!;
        else into[rowOrder + j] = from[interleaved]!;
      }
    }
  }
  return into;
}

/** Row-major Q4_0 blocks [rows, cols] → the interleaved layout (into `into`, same size). */
export function interleaveQ4_0Rows(
  blocks: Uint8Array,
  rows: number,
  cols: number,
  into: Uint8Array = new Uint8Array(blocks.length),
): Uint8Array {
  return permuteQ4_0Rows(blocks, rows, cols, into, true);
}

/** The interleaved layout → row-major Q4_0 blocks (GGUF's order). */
export function deinterleaveQ4_0Rows(
  interleaved: Uint8Array,
  rows: number,
  cols: number,
  into: Uint8Array = new Uint8Array(interleaved.length),
): Uint8Array {
  return permuteQ4_0Rows(interleaved, rows, cols, into, false);
}

// ── Q8_0 rows interleaved four at a time (the native layer and head files' layout) ───────────────

/**
 * Q8_0 rows stored four at a time: for each group of four rows and each block column, the four
 * rows' fp16 scales (8 B), then each row's 32 quants in turn (4 × 32 B). The blocks and their bits
 * are GGUF's; only their order changes, so a group's block column is one read and its scales one
 * load (engine/native/block-gemm.cc, `Q8Groups`).
 */
export const Q8_0X4_GROUP_BYTES = Q4_0X4_ROWS * BLOCK_BYTES.q8_0;

/** Byte `j` (0 … 33: scale bytes, then qs) of row `row`'s block `b` in the interleaved Q8_0 layout. */
export function q8_0x4Offset(row: number, b: number, j: number, blocksPerRow: number): number {
  const lane = row % Q4_0X4_ROWS;
  const base = (((row - lane) / Q4_0X4_ROWS) * blocksPerRow + b) * Q8_0X4_GROUP_BYTES;
  return j < 2 ? base + 2 * lane + j : base + 2 * Q4_0X4_ROWS + BLOCK * lane + (j - 2);
}

/** Row-major Q8_0 blocks [rows, cols] → rows interleaved four at a time (into `into`, same size). */
export function interleaveQ8_0Rows(
  blocks: Uint8Array,
  rows: number,
  cols: number,
  into: Uint8Array = new Uint8Array(blocks.length),
): Uint8Array {
  const bytes = blockMatrixBytes('q8_0', rows, cols);
  if (rows % Q4_0X4_ROWS !== 0 || cols % BLOCK !== 0)
    throw new RangeError(`interleaved Q8_0 needs rows a multiple of ${Q4_0X4_ROWS} and cols of ${BLOCK}; got ${rows}×${cols}`);
  if (blocks.length !== bytes || into.length !== bytes)
    throw new RangeError(`a ${rows}×${cols} Q8_0 matrix is ${bytes} bytes; got ${blocks.length} in, ${into.length} out`);
  const nb = cols / BLOCK;
  const size = BLOCK_BYTES.q8_0;
  for (let row = 0; row < rows; row++) {
    for (let b = 0; b < nb; b++) {
      const from = (row * nb + b) * size;
      const scale = q8_0x4Offset(row, b, 0, nb);
      into[scale] = blocks[from]!;
      into[scale + 1] = blocks[from + 1]!;
      into.set(blocks.subarray(from + 2, from + size), q8_0x4Offset(row, b, 2, nb));
    }
  }
  return into;
}
