/**
 * The Mixtral expert for `--device cuda`: GGUF Q4_0 blocks repacked into the layout of
 * onnxruntime's `com.microsoft.MatMulNBits`, and one shared SwiGLU graph that takes the packed
 * weights and their scales as GRAPH INPUTS, so any expert runs through the same session and a
 * page-in is a copy of bytes rather than a session creation (docs/gpu-experts.md).
 *
 * Layouts (docs/gpu-experts.md cites the onnxruntime sources):
 *   GGUF Q4_0, per block of 32 inputs (18 B): fp16 d, then qs[16];
 *     element j = (qs[j] & 0xF) − 8, element j+16 = (qs[j] >> 4) − 8, both times d.
 *   MatMulNBits (bits 4, block_size 32): B uint8 [N, K/32, 16], byte i of a block holds element 2i
 *     in its low nibble and element 2i+1 in its high nibble; scales [N, K/32] of A's float type;
 *     no zero_points input means zero point 8, so the nibbles are the same unsigned 0..15 values.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import onnxProto from 'onnx-proto';
import { BLOCK, BLOCK_BYTES } from '../formats/blocks.ts';
import { ExternalDataWriter, GraphBuilder, MS_DOMAIN } from './onnx-graph.ts';

/** Weights per Q4_0 block, along the input dimension; also MatMulNBits' block_size here. */
const Q4_0_BLOCK = BLOCK;
const Q4_0_BLOCK_BYTES = BLOCK_BYTES.q4_0;
/** Bytes of one MatMulNBits 4-bit blob for block_size 32 (block_size · bits / 8). */
export const MATMULNBITS_BLOB_BYTES = 16;

/** One matrix in MatMulNBits' form: `b` [rows, cols/32, 16] bytes, `scales` [rows, cols/32] fp16 bits. */
export interface MatMulNBitsMatrix {
  b: Uint8Array;
  scales: Uint16Array;
}

/**
 * Repacks a row-major [rows, cols] GGUF Q4_0 matrix (rows = outputs N, cols = inputs K) into
 * MatMulNBits' B and fp16 scales. Both formats keep a row's blocks in order along K and use the
 * same unsigned nibble with an implicit zero point of 8, so only two things move: the scale leaves
 * the block, and the nibbles are reordered (Q4_0 pairs elements j and j+16 in a byte,
 * MatMulNBits pairs 2i and 2i+1). The result is exact: same values, no rounding.
 */
export function repackQ4_0ForMatMulNBits(blocks: Uint8Array, rows: number, cols: number): MatMulNBitsMatrix {
  if (!Number.isInteger(rows) || rows < 0 || !Number.isInteger(cols) || cols < 0 || cols % Q4_0_BLOCK !== 0) {
    throw new RangeError(`a Q4_0 matrix needs whole rows and cols a multiple of ${Q4_0_BLOCK}; got ${rows}×${cols}`);
  }
  const count = rows * (cols / Q4_0_BLOCK);
  if (blocks.length !== count * Q4_0_BLOCK_BYTES) {
    throw new RangeError(
      `a ${rows}×${cols} Q4_0 matrix is ${count * Q4_0_BLOCK_BYTES} bytes (${count} blocks of ${Q4_0_BLOCK_BYTES}); got ${blocks.length}`,
    );
  }
  const b = new Uint8Array(count * MATMULNBITS_BLOB_BYTES);
  const scales = new Uint16Array(count);
  for (let block = 0, src = 0, dst = 0; block < count; block++, src += Q4_0_BLOCK_BYTES, dst += MATMULNBITS_BLOB_BYTES) {
    // fp16 d is little-endian in the file; the scale tensor is fed as raw fp16 bits.
    scales[block] = blocks[src]! | (blocks[src + 1]! << 8);
    // Byte i takes qs[2i] and qs[2i+1]: their low nibbles are elements 2i, 2i+1 (bytes 0..7), their
    // high nibbles elements 16+2i, 17+2i (bytes 8..15). One pass over qs, each byte read once.
    for (let i = 0, qs = src + 2; i < 8; i++, qs += 2) {
      const even = blocks[qs]!;
      const odd = blocks[qs + 1]!;
      b[dst + i] = (even & 0x0f) | ((odd & 0x0f) << 4);
      b[dst + 8 + i] = (even >>> 4) | (odd & 0xf0);
    }
  }
  return { b, scales };
}

/** One expert's inputs to the graph of `buildMatMulNBitsExpertGraph`. */
export interface MatMulNBitsExpertWeights {
  /** w1 then w3, [2·ffn, dim/32, 16]: one MatMulNBits computes both projections. */
  b13: Uint8Array;
  /** [2·ffn, dim/32] fp16 bits. */
  s13: Uint16Array;
  /** w2, [dim, ffn/32, 16]. */
  b2: Uint8Array;
  /** [dim, ffn/32] fp16 bits. */
  s2: Uint16Array;
}

/**
 * Repacks one expert's GGUF Q4_0 matrices (w1, w3: [ffn, dim]; w2: [dim, ffn]). w1 and w3 are
 * stacked along N: B and scales are row-major with N outermost, so stacking is concatenation.
 */
export function repackQ4_0Expert(w1: Uint8Array, w3: Uint8Array, w2: Uint8Array, dim: number, ffn: number): MatMulNBitsExpertWeights {
  const gate = repackQ4_0ForMatMulNBits(w1, ffn, dim);
  const up = repackQ4_0ForMatMulNBits(w3, ffn, dim);
  const down = repackQ4_0ForMatMulNBits(w2, dim, ffn);
  const b13 = new Uint8Array(gate.b.length + up.b.length);
  b13.set(gate.b);
  b13.set(up.b, gate.b.length);
  const s13 = new Uint16Array(gate.scales.length + up.scales.length);
  s13.set(gate.scales);
  s13.set(up.scales, gate.scales.length);
  return { b13, s13, b2: down.b, s2: down.scales };
}

export interface MatMulNBitsExpertGraphOptions {
  /**
   * The float type MatMulNBits computes in (its T1; the scales are converted to it inside the
   * graph). 'float32' (default) is exact against fp32 reference maths on every execution
   * provider; 'float16' is the type onnxruntime's CUDA 4-bit kernels are written for (half2 GEMV,
   * fp16 dequantise + tensor-core GEMM), at fp16 rounding of the activations and products.
   * Split, Sigmoid and Mul stay fp32 either way (every EP has fp32 kernels for them).
   */
  activation?: 'float32' | 'float16';
}

/** onnx TensorProto.DataType codes the graph needs beyond GraphBuilder's ElementType. */
const FLOAT = 1;
const FLOAT16 = 10;

/**
 * Writes the expert FFN graph y = w2 · (silu(w1·x) ⊙ (w3·x)) for a given width to `path`, with no
 * weights inside it. Inputs: x float32 [rows, dim]; b13 uint8 [2·ffn, dim/32, 16]; s13 float16
 * [2·ffn, dim/32]; b2 uint8 [dim, ffn/32, 16]; s2 float16 [dim, ffn/32]. Output: y float32
 * [rows, dim]. B and scales are inputs, never initializers: onnxruntime prepacks only constant
 * initializers, and an input can be any expert's bytes (docs/gpu-experts.md says what that costs
 * on each execution provider).
 */
export function buildMatMulNBitsExpertGraph(path: string, dim: number, ffn: number, options: MatMulNBitsExpertGraphOptions = {}): void {
  if (dim % Q4_0_BLOCK !== 0 || ffn % Q4_0_BLOCK !== 0) {
    throw new RangeError(`MatMulNBits experts need dim and ffn multiples of ${Q4_0_BLOCK}; got dim ${dim}, ffn ${ffn}`);
  }
  const half = options.activation === 'float16';
  const external = new ExternalDataWriter(`${path}.data`);
  try {
    const g = new GraphBuilder('expert_ffn_matmulnbits', external);
    const x = g.input('x', 'float32', ['rows', dim]);
    const b13 = g.input('b13', 'uint8', [2 * ffn, dim / Q4_0_BLOCK, MATMULNBITS_BLOB_BYTES]);
    // Declared float32 here and retyped to float16 after saving: see retypeInputs.
    const s13 = g.input('s13', 'float32', [2 * ffn, dim / Q4_0_BLOCK]);
    const b2 = g.input('b2', 'uint8', [dim, ffn / Q4_0_BLOCK, MATMULNBITS_BLOB_BYTES]);
    const s2 = g.input('s2', 'float32', [dim, ffn / Q4_0_BLOCK]);

    // MatMulNBits' scales are of A's type (T1): fp16 bits cast to fp32 exactly when computing in fp32.
    const scales = (value: string): string => (half ? value : g.op('Cast', [value], { to: FLOAT }));
    // In fp16 mode only the two MatMulNBits run in fp16: activations go in and come out through Casts.
    const intoCompute = (value: string): string => (half ? g.op('Cast', [value], { to: FLOAT16 }) : value);
    const outOfCompute = (value: string): string => (half ? g.op('Cast', [value], { to: FLOAT }) : value);
    const matMulNBits = (a: string, b: string, s: string, k: number, n: number): string =>
      // No zero_points input: the 4-bit default zero point is 8, which is Q4_0's offset.
      // accuracy_level 0: A is not quantised or downcast inside the op.
      outOfCompute(
        g.op('MatMulNBits', [intoCompute(a), b, scales(s)], { K: k, N: n, bits: 4, block_size: Q4_0_BLOCK, accuracy_level: 0 }, MS_DOMAIN),
      );

    // w1 and w3 are one [2·ffn, dim] matrix, so both projections cost one pass over x.
    const h = matMulNBits(x, b13, s13, dim, 2 * ffn);
    const [gate, up] = g.split(h, [ffn, ffn], 1);
    const silu = g.op('Mul', [gate, g.op('Sigmoid', [gate])]);
    const y = matMulNBits(g.op('Mul', [silu, up]), b2, s2, ffn, dim);
    g.output(y, 'y', 'float32', ['rows', dim]);
    g.save(path);
  } finally {
    external.close();
  }
  retypeInputs(path, { s13: FLOAT16, s2: FLOAT16 });
}

/**
 * Changes the element type of graph inputs in a saved model. GraphBuilder's ElementType has no
 * float16, and the scales must come in as fp16 bits (the format's own scale bytes, half the size
 * of fp32); rewriting the small .onnx (no weights in it) keeps the shared builder unchanged.
 */
function retypeInputs(path: string, types: Record<string, number>): void {
  const { onnx } = onnxProto;
  const model = onnx.ModelProto.decode(readFileSync(path));
  for (const input of model.graph?.input ?? []) {
    const type = input.name ? types[input.name] : undefined;
    const tensorType = input.type?.tensorType;
    if (type === undefined) continue;
    if (!tensorType) throw new Error(`graph input ${input.name} is not a tensor`);
    tensorType.elemType = type;
  }
  writeFileSync(path, onnx.ModelProto.encode(model).finish());
}
