/**
 * Weight quantization for onnxruntime's MatMulNBits (com.microsoft): symmetric, blocks along the
 * input dimension, fp32 scales, implicit zero point 2^(bits-1).
 *
 * Layout (contrib op spec): B is uint8 [N, ceil(K/block), block*bits/8] — for 4 bits the low nibble
 * holds the even element; scales are [N, ceil(K/block)]. A value dequantizes to (q - 2^(bits-1)) · scale.
 */
export type QuantBits = 4 | 8;

/**
 * How a block's scale is chosen.
 * - `absmax`: round-to-nearest with the scale set by the block's extreme (plain RTN).
 * - `search`: the block's extreme is mapped to -7.1 … -8.9 levels in tenths; each candidate's levels
 *   get the least-squares scale, and the one leaving the smallest squared error wins (llama.cpp's
 *   make_qx_quants). At 4 bits it lowers mean KL(fp32‖int4) on the golden models by 13–18% against
 *   absmax, at no cost at run time (conversion: ≈ 80 ns per weight on these machines).
 */
export type ScaleMode = 'absmax' | 'search';

export interface QuantScheme {
  bits: QuantBits;
  blockSize: number;
  mode: ScaleMode;
}

/** The scheme of a store's quantized weights, with the tensors that get another one. */
export interface QuantizationPlan {
  linears: QuantScheme;
  /** Canonical tensor name → its own scheme. */
  overrides: Record<string, QuantScheme>;
}

/**
 * int8: block 32, plain RTN — finer scales keep greedy output identical to fp32 on the golden
 * prompts (block 64/128 flips one near-tie).
 * int4: block 128 with searched scales. Smaller blocks are more accurate but onnxruntime 1.30's CPU
 * MatMulNBits kernel (acc level 4) is compute-bound there: on the 1.0B bench shape block 32
 * decodes 18% and prefills 21% slower. The lm_head (output.weight) stays int8 block 32, as
 * llama.cpp's Q4_0 keeps output.weight at Q6_K: the logits come straight out of it, and int4 there
 * alone costs 8–9 of the 58 golden top-1 positions. On the 1.0B shape that is +39 MB read per token
 * (+7.8%) for no measurable decode slowdown.
 */
export function quantizationPlan(precision: 'int8' | 'int4'): QuantizationPlan {
  const int8: QuantScheme = { bits: 8, blockSize: 32, mode: 'absmax' };
  if (precision === 'int8') return { linears: int8, overrides: {} };
  return { linears: { bits: 4, blockSize: 128, mode: 'search' }, overrides: { 'output.weight': int8 } };
}

export function schemeFor(plan: QuantizationPlan, tensor: string): QuantScheme {
  const own = plan.overrides[tensor];
  if (own) return own;
  // Stacked linears ("a+b+c", one matmul) share their parts' override when all parts have the same one.
  const parts = tensor.split('+');
  const first = plan.overrides[parts[0]!];
  const same = (s: QuantScheme | undefined) =>
    s !== undefined && s.bits === first?.bits && s.blockSize === first.blockSize && s.mode === first.mode;
  if (parts.length > 1 && first && parts.every((part) => same(plan.overrides[part]))) return first;
  return plan.linears;
}

/**
 * Rows every quantized matmul gets at least. At block 128 MatMulNBits computes a single row (M=1)
 * with its own kernel whose rounding differs (~6e-8) from the M ≥ 2 kernel, which would make a
 * sequence's output depend on whether it shared its step with others. Padding to two rows keeps
 * results identical alone and batched, at almost no cost (14336×2048 int4: 0.39 ms at M=1,
 * 0.44 ms at M=2).
 */
export const MIN_MATMUL_ROWS = 2;

export interface QuantizedMatrix extends QuantScheme {
  /** Output features (rows of the [N, K] weight). */
  n: number;
  /** Input features. */
  k: number;
  packed: Uint8Array;
  scales: Float32Array;
}

/** Rounds `x · inverse` onto the levels around `zeroPoint` into `q`, clamped to 0…maxQ. */
function roundInto(x: Float32Array, length: number, q: Uint8Array, inverse: number, zeroPoint: number, maxQ: number): void {
  for (let i = 0; i < length; i++) {
    const v = Math.round(x[i]! * inverse) + zeroPoint;
    q[i] = v < 0 ? 0 : Math.min(v, maxQ);
  }
}

/**
 * Rounds with `inverse` (without storing the levels) and refits the scale by least squares,
 * s = Σx·l / Σl² for the signed levels l. Returns that scale and how far it lowers the squared
 * error below Σx², (Σx·l)² / Σl²: larger is better. One pass, so trying many candidates is cheap.
 */
function tryCandidate(x: Float32Array, length: number, inverse: number, zeroPoint: number, maxQ: number): { scale: number; gain: number } {
  let xl = 0;
  let ll = 0;
  for (let i = 0; i < length; i++) {
    const xi = x[i]!;
    const v = Math.round(xi * inverse) + zeroPoint;
    const level = (v < 0 ? 0 : Math.min(v, maxQ)) - zeroPoint;
    xl += xi * level;
    ll += level * level;
  }
  return ll === 0 ? { scale: 0, gain: 0 } : { scale: xl / ll, gain: (xl * xl) / ll };
}

/** The block's value of largest magnitude, with its sign. */
function extremeOf(x: Float32Array, length: number): number {
  let extreme = 0;
  for (let i = 0; i < length; i++) {
    const xi = x[i]!;
    if (Math.abs(xi) > Math.abs(extreme)) extreme = xi;
  }
  return extreme;
}

/** Candidate mappings tried around the plain one, in tenths of a level (as llama.cpp: ±0.9). */
const SEARCH_STEPS = 9;

/** Fills `q` with one block's levels and returns its scale. */
function quantizeBlock(x: Float32Array, length: number, { bits, mode }: QuantScheme, q: Uint8Array): number {
  const zeroPoint = 1 << (bits - 1);
  const maxQ = (1 << bits) - 1;
  const extreme = extremeOf(x, length);
  if (extreme === 0) {
    q.fill(zeroPoint, 0, length);
    return 0;
  }
  if (mode === 'absmax') {
    // 4 bits: every level counts, so the extreme maps to -8 (Q4_0 style). 8 bits: plain symmetric
    // ±127, measured closer to fp32 on the golden greedy prompts.
    const scale = bits === 4 ? extreme / -zeroPoint : Math.abs(extreme) / (zeroPoint - 1);
    roundInto(x, length, q, 1 / scale, zeroPoint, maxQ);
    return scale;
  }
  // The extreme maps to -(8 + step/10) levels; step 0 is the absmax mapping, so the search never
  // does worse than it.
  let best = { inverse: 0, scale: 0, gain: -1 };
  for (let step = -SEARCH_STEPS; step <= SEARCH_STEPS; step++) {
    const inverse = -(zeroPoint + step / 10) / extreme;
    const candidate = tryCandidate(x, length, inverse, zeroPoint, maxQ);
    if (candidate.gain > best.gain) best = { inverse, ...candidate };
  }
  roundInto(x, length, q, best.inverse, zeroPoint, maxQ);
  return best.scale;
}

/** Quantizes a row-major [n, k] weight (PyTorch `Linear.weight` layout: out × in). */
export function quantizeMatrix(weight: Float32Array, n: number, k: number, scheme: QuantScheme): QuantizedMatrix {
  const { bits, blockSize } = scheme;
  const blocks = Math.ceil(k / blockSize);
  const bytesPerBlock = (blockSize * bits) / 8;
  const packed = new Uint8Array(n * blocks * bytesPerBlock);
  const scales = new Float32Array(n * blocks);
  const x = new Float32Array(blockSize);
  const q = new Uint8Array(blockSize);

  for (let row = 0; row < n; row++) {
    for (let block = 0; block < blocks; block++) {
      const start = row * k + block * blockSize;
      const length = Math.min(blockSize, k - block * blockSize);
      x.set(weight.subarray(start, start + length));
      scales[row * blocks + block] = quantizeBlock(x, length, scheme, q);
      q.fill(1 << (bits - 1), length); // padding past k dequantizes to exactly 0
      const out = (row * blocks + block) * bytesPerBlock;
      if (bits === 8) packed.set(q, out);
      else for (let j = 0; j < blockSize / 2; j++) packed[out + j] = q[2 * j]! | (q[2 * j + 1]! << 4);
    }
  }
  return { ...scheme, n, k, packed, scales };
}

/** The float weight a quantized matrix stands for (row-major [n, k]); used by tests and KL checks. */
export function dequantizeMatrix({ bits, blockSize, n, k, packed, scales }: QuantizedMatrix): Float32Array {
  const blocks = Math.ceil(k / blockSize);
  const bytesPerBlock = (blockSize * bits) / 8;
  const zeroPoint = 1 << (bits - 1);
  const out = new Float32Array(n * k);
  for (let row = 0; row < n; row++) {
    for (let i = 0; i < k; i++) {
      const block = Math.floor(i / blockSize);
      const inBlock = i % blockSize;
      const base = (row * blocks + block) * bytesPerBlock;
      const q = bits === 8 ? packed[base + inBlock]! : (packed[base + (inBlock >> 1)]! >> ((inBlock & 1) * 4)) & 0xf;
      out[row * k + i] = (q - zeroPoint) * scales[row * blocks + block]!;
    }
  }
  return out;
}

/** Weight precision of a converted store: plain fp32 MatMul, or MatMulNBits with 8 or 4 bits. */
export type Precision = 'fp32' | 'int8' | 'int4';
