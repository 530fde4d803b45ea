/**
 * The MatMulNBits expert path as a specification, on onnxruntime's CPU execution provider: the
 * repack of GGUF Q4_0 blocks is exact (every element keeps its value and place), and the shared
 * expert graph, fed repacked bytes as graph inputs, computes the SwiGLU expert of the dequantised
 * weights. The same graph on the CUDA execution provider awaits a GPU machine
 * (docs/gpu-experts.md lists what to run there); nothing here needs one.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, describe, expect, it } from 'vitest';
import { gaussianValues } from '../../test/support/random.ts';
import { createSession } from '../engine/device.ts';
import { BLOCK, BLOCK_BYTES, blockMatrixBytes, dequantizeBlocks, fromFloat16Bits, quantizeBlocks } from '../formats/blocks.ts';
import { buildMatMulNBitsExpertGraph, MATMULNBITS_BLOB_BYTES, repackQ4_0Expert, repackQ4_0ForMatMulNBits } from './gpu-expert-graph.ts';

// ── deterministic data ─────────────────────────────────────────────────────────────────────────

const randomMatrix = (rows: number, cols: number, seed: number, scale: number) => gaussianValues(seed, rows * cols, scale);

// ── Q4_0 blocks as the store writes them (formats/blocks.ts, byte-identical to llama.cpp's) ──────

const Q4_0_BLOCK = BLOCK;
const Q4_0_BLOCK_BYTES = BLOCK_BYTES.q4_0;

function quantiseQ4_0(values: Float32Array, rows: number, cols: number): Uint8Array {
  const out = new Uint8Array(blockMatrixBytes('q4_0', rows, cols));
  quantizeBlocks('q4_0', values, rows, cols, out);
  return out;
}

/** Q4_0 blocks → float64 [rows, cols], from the GGUF definition (independent of the repack). */
const dequantiseQ4_0 = (blocks: Uint8Array, rows: number, cols: number): Float64Array =>
  Float64Array.from(dequantizeBlocks('q4_0', blocks, rows, cols));

/** MatMulNBits B + scales → float64 [rows, cols], from onnxruntime's definition (low nibble = even element). */
function dequantiseMatMulNBits(b: Uint8Array, scales: Uint16Array, rows: number, cols: number): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let block = 0; block < scales.length; block++) {
    const d = fromFloat16Bits(scales[block]!);
    for (let i = 0; i < MATMULNBITS_BLOB_BYTES; i++) {
      const byte = b[block * MATMULNBITS_BLOB_BYTES + i]!;
      out[block * Q4_0_BLOCK + 2 * i] = ((byte & 0x0f) - 8) * d;
      out[block * Q4_0_BLOCK + 2 * i + 1] = ((byte >>> 4) - 8) * d;
    }
  }
  return out;
}

/** The SwiGLU expert in float64: y = w2 · (silu(w1·x) ⊙ (w3·x)), w1/w3 [ffn, dim], w2 [dim, ffn]. */
function expertReference(
  x: Float32Array,
  rows: number,
  w1: Float64Array,
  w3: Float64Array,
  w2: Float64Array,
  dim: number,
  ffn: number,
): Float64Array {
  const y = new Float64Array(rows * dim);
  const hidden = new Float64Array(ffn);
  for (let r = 0; r < rows; r++) {
    for (let f = 0; f < ffn; f++) {
      let gate = 0;
      let up = 0;
      for (let k = 0; k < dim; k++) {
        gate += w1[f * dim + k]! * x[r * dim + k]!;
        up += w3[f * dim + k]! * x[r * dim + k]!;
      }
      hidden[f] = (gate / (1 + Math.exp(-gate))) * up;
    }
    for (let o = 0; o < dim; o++) {
      let sum = 0;
      for (let f = 0; f < ffn; f++) sum += w2[o * ffn + f]! * hidden[f]!;
      y[r * dim + o] = sum;
    }
  }
  return y;
}

/** max |a − b| / max |b|: the error relative to the output's scale. */
function relativeError(actual: Float32Array, expected: Float64Array): number {
  let error = 0;
  let scale = 0;
  for (let i = 0; i < expected.length; i++) {
    error = Math.max(error, Math.abs(actual[i]! - expected[i]!));
    scale = Math.max(scale, Math.abs(expected[i]!));
  }
  return error / scale;
}

// ── the repack ─────────────────────────────────────────────────────────────────────────────────

describe('repackQ4_0ForMatMulNBits', () => {
  it('moves each nibble from Q4_0 order (j, j+16 per byte) to MatMulNBits order (2i, 2i+1 per byte)', () => {
    // One block whose element e has the nibble e % 16 and whose scale is 1.0 (0x3c00).
    const block = new Uint8Array(Q4_0_BLOCK_BYTES);
    block[0] = 0x00;
    block[1] = 0x3c;
    for (let j = 0; j < 16; j++) block[2 + j] = j | (((j + 16) % 16) << 4);
    const { b, scales } = repackQ4_0ForMatMulNBits(block, 1, Q4_0_BLOCK);
    expect(Array.from(scales)).toEqual([0x3c00]);
    // Byte i: element 2i (nibble 2i % 16) low, element 2i+1 high.
    expect(Array.from(b)).toEqual(Array.from({ length: 16 }, (_, i) => ((2 * i) % 16) | (((2 * i + 1) % 16) << 4)));
  });

  it('keeps every element of a random matrix, value and place', () => {
    const rows = 7;
    const cols = 5 * Q4_0_BLOCK;
    const blocks = quantiseQ4_0(randomMatrix(rows, cols, 11, 0.05), rows, cols);
    const { b, scales } = repackQ4_0ForMatMulNBits(blocks, rows, cols);
    expect(b.length).toBe(rows * (cols / Q4_0_BLOCK) * MATMULNBITS_BLOB_BYTES);
    expect(scales.length).toBe(rows * (cols / Q4_0_BLOCK));
    expect(dequantiseMatMulNBits(b, scales, rows, cols)).toEqual(dequantiseQ4_0(blocks, rows, cols));
  });

  it('refuses shapes that are not whole Q4_0 rows', () => {
    expect(() => repackQ4_0ForMatMulNBits(new Uint8Array(18), 1, 16)).toThrow(RangeError);
    expect(() => repackQ4_0ForMatMulNBits(new Uint8Array(17), 1, 32)).toThrow(/18 bytes/);
  });

  it('stacks w1 over w3 for the fused projection', () => {
    const dim = 64;
    const ffn = 96;
    const w1 = quantiseQ4_0(randomMatrix(ffn, dim, 1, 0.1), ffn, dim);
    const w3 = quantiseQ4_0(randomMatrix(ffn, dim, 2, 0.1), ffn, dim);
    const w2 = quantiseQ4_0(randomMatrix(dim, ffn, 3, 0.1), dim, ffn);
    const weights = repackQ4_0Expert(w1, w3, w2, dim, ffn);
    const stacked = dequantiseMatMulNBits(weights.b13, weights.s13, 2 * ffn, dim);
    expect(stacked.subarray(0, ffn * dim)).toEqual(dequantiseQ4_0(w1, ffn, dim));
    expect(stacked.subarray(ffn * dim)).toEqual(dequantiseQ4_0(w3, ffn, dim));
    expect(dequantiseMatMulNBits(weights.b2, weights.s2, dim, ffn)).toEqual(dequantiseQ4_0(w2, dim, ffn));
  });
});

// ── the graph, on the CPU execution provider ───────────────────────────────────────────────────

describe('buildMatMulNBitsExpertGraph on the CPU execution provider (the CUDA run awaits a GPU)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sirocco-gpu-expert-graph-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const dim = 128;
  const ffn = 320;
  const rows = 3;
  const w1 = quantiseQ4_0(randomMatrix(ffn, dim, 21, 0.08), ffn, dim);
  const w3 = quantiseQ4_0(randomMatrix(ffn, dim, 22, 0.08), ffn, dim);
  const w2 = quantiseQ4_0(randomMatrix(dim, ffn, 23, 0.06), dim, ffn);
  const x = randomMatrix(rows, dim, 24, 1);
  const expected = expertReference(
    x,
    rows,
    dequantiseQ4_0(w1, ffn, dim),
    dequantiseQ4_0(w3, ffn, dim),
    dequantiseQ4_0(w2, dim, ffn),
    dim,
    ffn,
  );
  const weights = repackQ4_0Expert(w1, w3, w2, dim, ffn);

  async function runExpert(activation: 'float32' | 'float16', input: Float32Array, inputRows: number): Promise<Float32Array> {
    const path = join(dir, `expert-${activation}.onnx`);
    buildMatMulNBitsExpertGraph(path, dim, ffn, { activation });
    const session = await createSession(path, { device: 'cpu', threads: 2 });
    try {
      const result = await session.run({
        x: new ort.Tensor('float32', input, [inputRows, dim]),
        b13: new ort.Tensor('uint8', weights.b13, [2 * ffn, dim / Q4_0_BLOCK, MATMULNBITS_BLOB_BYTES]),
        s13: new ort.Tensor('float16', weights.s13, [2 * ffn, dim / Q4_0_BLOCK]),
        b2: new ort.Tensor('uint8', weights.b2, [dim, ffn / Q4_0_BLOCK, MATMULNBITS_BLOB_BYTES]),
        s2: new ort.Tensor('float16', weights.s2, [dim, ffn / Q4_0_BLOCK]),
      });
      const y = result.y;
      if (y?.type !== 'float32') throw new Error('the expert graph returned no float32 y');
      expect(y.dims).toEqual([inputRows, dim]);
      return y.data as Float32Array;
    } finally {
      await session.release();
    }
  }

  it('computes the expert of the dequantised weights in fp32 (within 1e-4 of float64)', async () => {
    expect(relativeError(await runExpert('float32', x, rows), expected)).toBeLessThan(1e-4);
  });

  it('runs one row alone the same as within a batch (the M=1 decode shape)', async () => {
    const y = await runExpert('float32', x.subarray(0, dim), 1);
    expect(relativeError(y, expected.subarray(0, dim))).toBeLessThan(1e-4);
  });

  it('computes it in fp16 within fp16 rounding (the type the CUDA 4-bit kernels target)', async () => {
    const error = relativeError(await runExpert('float16', x, rows), expected);
    // fp16 carries 11 significant bits: activations and products round at ~5e-4 each.
    expect(error).toBeLessThan(1e-2);
    expect(error).toBeGreaterThan(0);
  });

  it('refuses widths that are not whole blocks', () => {
    expect(() => buildMatMulNBitsExpertGraph(join(dir, 'bad.onnx'), 100, ffn)).toThrow(RangeError);
  });
});
