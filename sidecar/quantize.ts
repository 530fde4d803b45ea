/**
 * Weight quantization for onnxruntime's MatMulNBits (com.microsoft): symmetric round-to-nearest,
 * blocks along the input dimension, fp32 scales, implicit zero point 2^(bits-1).
 *
 * Layout (contrib op spec): B is uint8 [N, ceil(K/block), block*bits/8] — for 4 bits the low nibble
 * holds the even element; scales are [N, ceil(K/block)].
 */
/**
 * Block size per bit width. int4 uses 128: onnxruntime 1.30's CPU MatMulNBits kernel (acc level 4)
 * is compute-bound at block 32 — one 7168×2048 matrix at M=1 takes 1.1 ms at block 32, 0.49 ms at
 * 64, 0.24 ms at 128 on these 2-core machines — so only block 128 decodes at memory bandwidth.
 * int8 keeps 32: its kernel is fast enough there, and finer scales keep greedy output identical
 * to fp32 on the golden prompts (block 64/128 flips one near-tie).
 */
export function blockSizeFor(bits: QuantBits): number {
  return bits === 4 ? 128 : 32;
}

/**
 * Rows every quantized matmul gets at least. At block 128 MatMulNBits computes a single row (M=1)
 * with its own kernel whose rounding differs (~6e-8) from the M ≥ 2 kernel, which would make a
 * sequence's output depend on whether it shared its step with others. Padding to two rows keeps
 * results identical alone and batched, at almost no cost (14336×2048 int4: 0.39 ms at M=1,
 * 0.44 ms at M=2).
 */
export const MIN_MATMUL_ROWS = 2;

export type QuantBits = 4 | 8;

export interface QuantizedMatrix {
  bits: QuantBits;
  blockSize: number;
  /** Output features (rows of the [N, K] weight). */
  n: number;
  /** Input features. */
  k: number;
  packed: Uint8Array;
  scales: Float32Array;
}

/** Quantizes a row-major [n, k] weight (PyTorch `Linear.weight` layout: out × in). */
export function quantizeMatrix(weight: Float32Array, n: number, k: number, bits: QuantBits, blockSize = blockSizeFor(bits)): QuantizedMatrix {
  const blocks = Math.ceil(k / blockSize);
  const bytesPerBlock = (blockSize * bits) / 8;
  const zeroPoint = 1 << (bits - 1);
  const maxQ = (1 << bits) - 1;
  const packed = new Uint8Array(n * blocks * bytesPerBlock);
  const scales = new Float32Array(n * blocks);
  const q = new Uint8Array(blockSize);

  for (let row = 0; row < n; row++) {
    const rowStart = row * k;
    for (let block = 0; block < blocks; block++) {
      const start = block * blockSize;
      const end = Math.min(start + blockSize, k);
      let extreme = 0;
      for (let i = start; i < end; i++) {
        const v = weight[rowStart + i];
        if (Math.abs(v) > Math.abs(extreme)) extreme = v;
      }
      // 4 bits: every level counts, so the extreme maps to -8 (Q4_0 style). 8 bits: plain
      // symmetric ±127, measured closer to fp32 on the golden greedy prompts.
      const scale = bits === 4 ? extreme / -zeroPoint : Math.abs(extreme) / (zeroPoint - 1);
      const inverse = scale === 0 ? 0 : 1 / scale;
      q.fill(zeroPoint); // padding past k dequantizes to exactly 0
      for (let i = start; i < end; i++) {
        const value = Math.round(weight[rowStart + i] * inverse) + zeroPoint;
        q[i - start] = value < 0 ? 0 : value > maxQ ? maxQ : value;
      }
      scales[row * blocks + block] = scale;
      const out = (row * blocks + block) * bytesPerBlock;
      if (bits === 8) packed.set(q, out);
      else for (let j = 0; j < blockSize / 2; j++) packed[out + j] = q[2 * j] | (q[2 * j + 1] << 4);
    }
  }
  return { bits, blockSize, n, k, packed, scales };
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
      const q = bits === 8 ? packed[base + inBlock] : (packed[base + (inBlock >> 1)] >> ((inBlock & 1) * 4)) & 0xf;
      out[row * k + i] = (q - zeroPoint) * scales[row * blocks + block];
    }
  }
  return out;
}

/** Weight precision of a converted store: plain fp32 MatMul, or MatMulNBits with 8 or 4 bits. */
export type Precision = 'fp32' | 'int8' | 'int4';
