/**
 * Dequantisation of llama.cpp's K-quant super-blocks (256 values each), as ggml's
 * dequantize_row_q4_K / _q5_K / _q6_K compute them, in fp32 step by step (Math.fround) so the
 * values match llama.cpp's bit for bit. Only reading is needed: a GGUF file's K-quant tensors are
 * expanded to fp32 for the graph builders and re-quantised to the store's own formats.
 *
 *   Q4_K (144 B): fp16 d, fp16 dmin, scales[12] (8 six-bit scale/min pairs), qs[128] (4-bit)
 *   Q5_K (176 B): fp16 d, fp16 dmin, scales[12], qh[32] (fifth bits), qs[128]
 *   Q6_K (210 B): ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] int8, fp16 d
 */
import { fromFloat16Bits } from './blocks.ts';

export type KQuantFormat = 'q4_k' | 'q5_k' | 'q6_k';

export const QK_K = 256;
export const K_BLOCK_BYTES: Record<KQuantFormat, number> = { q4_k: 144, q5_k: 176, q6_k: 210 };

const fround = Math.fround;

/** ggml's get_scale_min_k4: the j-th six-bit (scale, min) pair of a Q4_K / Q5_K block. */
function scaleMin(bytes: Uint8Array, scales: number, j: number): [number, number] {
  if (j < 4) return [bytes[scales + j]! & 63, bytes[scales + j + 4]! & 63];
  const sc = (bytes[scales + j + 4]! & 0x0f) | ((bytes[scales + j - 4]! >> 6) << 4);
  const m = (bytes[scales + j + 4]! >> 4) | ((bytes[scales + j]! >> 6) << 4);
  return [sc, m];
}

function half(bytes: Uint8Array, at: number): number {
  return fromFloat16Bits(bytes[at]! | (bytes[at + 1]! << 8));
}

function q4kOrQ5k(bytes: Uint8Array, count: number, fifthBits: boolean): Float32Array {
  const out = new Float32Array(count);
  const size = fifthBits ? K_BLOCK_BYTES.q5_k : K_BLOCK_BYTES.q4_k;
  for (let block = 0; block < count / QK_K; block++) {
    const at = block * size;
    const d = half(bytes, at);
    const min = half(bytes, at + 2);
    const scales = at + 4;
    const qh = at + 16; // Q5_K only
    let qs = fifthBits ? at + 48 : at + 16;
    let y = block * QK_K;
    let u1 = 1;
    let u2 = 2;
    for (let j = 0, is = 0; j < QK_K; j += 64, is += 2) {
      const [sc1, m1] = scaleMin(bytes, scales, is);
      const [sc2, m2] = scaleMin(bytes, scales, is + 1);
      const d1 = fround(d * sc1);
      const min1 = fround(min * m1);
      const d2 = fround(d * sc2);
      const min2 = fround(min * m2);
      for (let l = 0; l < 32; l++) {
        const high = fifthBits && bytes[qh + l]! & u1 ? 16 : 0;
        out[y + l] = fround(d1 * ((bytes[qs + l]! & 0x0f) + high)) - min1;
      }
      for (let l = 0; l < 32; l++) {
        const high = fifthBits && bytes[qh + l]! & u2 ? 16 : 0;
        out[y + 32 + l] = fround(d2 * ((bytes[qs + l]! >> 4) + high)) - min2;
      }
      qs += 32;
      y += 64;
      u1 <<= 2;
      u2 <<= 2;
    }
  }
  return out;
}

function q6k(bytes: Uint8Array, count: number): Float32Array {
  const out = new Float32Array(count);
  for (let block = 0; block < count / QK_K; block++) {
    const at = block * K_BLOCK_BYTES.q6_k;
    const d = half(bytes, at + 208);
    let ql = at;
    let qh = at + 128;
    let sc = at + 192;
    let y = block * QK_K;
    for (let n = 0; n < QK_K; n += 128) {
      for (let l = 0; l < 32; l++) {
        const is = l >> 4;
        const h = bytes[qh + l]!;
        const q1 = ((bytes[ql + l]! & 0x0f) | ((h & 3) << 4)) - 32;
        const q2 = ((bytes[ql + l + 32]! & 0x0f) | (((h >> 2) & 3) << 4)) - 32;
        const q3 = ((bytes[ql + l]! >> 4) | (((h >> 4) & 3) << 4)) - 32;
        const q4 = ((bytes[ql + l + 32]! >> 4) | (((h >> 6) & 3) << 4)) - 32;
        const scale = (k: number) => fround(d * ((bytes[sc + is + k]! << 24) >> 24));
        out[y + l] = scale(0) * q1;
        out[y + l + 32] = scale(2) * q2;
        out[y + l + 64] = scale(4) * q3;
        out[y + l + 96] = scale(6) * q4;
      }
      y += 128;
      ql += 64;
      qh += 32;
      sc += 8;
    }
  }
  return out;
}

/** The `count` values (a multiple of 256) that `bytes` of K-quant super-blocks stand for. */
export function dequantizeKQuant(format: KQuantFormat, bytes: Uint8Array, count: number): Float32Array {
  if (count % QK_K !== 0) throw new RangeError(`${format} holds multiples of ${QK_K} values, not ${count}`);
  if (bytes.byteLength < (count / QK_K) * K_BLOCK_BYTES[format])
    throw new RangeError(`${bytes.byteLength} bytes are too few for ${count} ${format} values`);
  if (format === 'q6_k') return q6k(bytes, count);
  return q4kOrQ5k(bytes, count, format === 'q5_k');
}
