/**
 * Mixtral's head (final RMSNorm and lm_head) in the native addon's Q8_0 product, on the store's
 * head file (layer-store.ts), its vocabulary rows shared with the addon's helper thread.
 *
 * Why: onnxruntime's int8 head took 1.7–2.2 ms of a ~7 ms resident decode token on the bench shape
 * (34 MB, cold after the experts, one session run), where this one reads it on both cores in
 * 1.1–1.6 ms (timed alternately in the decode loop). Same 8 bits: Q8_0 blocks of 32 with an fp16
 * scale against MatMulNBits' int8 blocks of 32; activations are rounded per block of 32 to int8 in
 * both.
 *
 * The rows of lm_head are cut into chunks that this thread and the addon's helper thread claim
 * (engine/native/helper-thread.cc), the same thread the layers and experts share their work with;
 * each chunk writes its own logits, so the bits do not depend on who ran which.
 */
import { BLOCK, blockMatrixBytes, interleaveQ8_0Rows, quantizeBlocks } from '../../formats/blocks.ts';
import type { ModelConfig } from '../../formats/model-config.ts';
import { ACTIVATION_RECORD_BYTES, alignUp, blockGemmScalar, quantizeActivations } from '../experts/block-kernel.ts';
import type { NativeGemm } from '../experts/native-gemm.ts';

export type HeadShape = Pick<ModelConfig, 'vocabSize' | 'dim' | 'normEps'>;

/** Logits [rows.length, vocab] for the hidden rows `rows` (flat indices into hidden [batch·seq, dim]). */
export interface LogitHead {
  /** How many rows a call must get a multiple of (see LayerAttention.rowMultiple). */
  readonly rowMultiple: number;
  run(hidden: Float32Array, rows: BigInt64Array): Promise<Float32Array>;
  dispose(): Promise<void>;
}

/** The shared product's layout code for the head file's blocks: Q8_0 rows interleaved four at a time. */
const Q8_0_ROWS_INTERLEAVED = 2;

/** Rows per product call: bounds the logits scratch (ROWS_PER_CALL × vocab floats). */
const ROWS_PER_CALL = 16;

/** Where the memory's parts start: lm_head's blocks, the activation records, the logits. */
interface HeadLayout {
  records: number;
  logits: number;
  bytes: number;
}

function headLayout(vocab: number, dim: number): HeadLayout {
  const records = alignUp(blockMatrixBytes('q8_0', vocab, dim), 64);
  const logits = alignUp(records + ROWS_PER_CALL * (dim / BLOCK) * ACTIVATION_RECORD_BYTES, 64);
  return { records, logits, bytes: logits + 4 * ROWS_PER_CALL * vocab };
}

/**
 * Whether this addon's product on the layer and head files' layout (Q8_0 rows interleaved four at a
 * time) gives the plain-JS reference's bits: one random 24×128 matrix against 5 rows, on one thread
 * and on two (a few microseconds). The runtime uses the native layers and head only if it does, as
 * the expert kernel checks its own products.
 */
export function layerProductsAgree(native: NativeGemm): boolean {
  const [rows, cols, m] = [24, 128, 5];
  let seed = 24680;
  const random = () => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return (seed >>> 8) / 2 ** 23 - 1;
  };
  const rowOrder = new Uint8Array(blockMatrixBytes('q8_0', rows, cols));
  quantizeBlocks('q8_0', Float32Array.from({ length: rows * cols }, random), rows, cols, rowOrder);
  const records = new Uint8Array(m * (cols / BLOCK) * ACTIVATION_RECORD_BYTES);
  quantizeActivations(Float32Array.from({ length: m * cols }, random), 0, m, cols, records);
  const expected = new Float32Array(m * rows);
  blockGemmScalar('q8_0', rowOrder, rows, cols, m, records, expected);
  const memory = new Uint8Array(rowOrder.length + records.length + 4 * m * rows);
  interleaveQ8_0Rows(rowOrder, rows, cols, memory.subarray(0, rowOrder.length));
  memory.set(records, rowOrder.length);
  const out = rowOrder.length + records.length;
  const expectedBits = new Uint32Array(expected.buffer);
  return [1, 2].every((threads) => {
    native.sharedProduct(memory, Int32Array.of(native.isaCode, Q8_0_ROWS_INTERLEAVED, cols, rows, m, threads), 0, rowOrder.length, out);
    return new Uint32Array(memory.buffer, out, m * rows).every((value, i) => value === expectedBits[i]);
  });
}

export class NativeHead implements LogitHead {
  /** Whether this head runs a vocabulary of this size: the product takes four rows at a time. */
  static fits(vocabSize: number): boolean {
    return vocabSize % 4 === 0;
  }

  /** Each row is quantised and summed on its own: no padding rows. */
  readonly rowMultiple = 1;
  private readonly memory: Uint8Array;
  private readonly layout: HeadLayout;
  private readonly norm: Float32Array;

  /**
   * @param payload the head file's payload: the final norm f32[dim], then lm_head's Q8_0 blocks [vocab, dim], rows interleaved four at a time
   * @param threads 2: this thread and the addon's helper thread; 1: this thread alone (the same bits)
   */
  constructor(
    payload: Uint8Array,
    private readonly config: HeadShape,
    private readonly native: NativeGemm,
    private readonly threads: number,
  ) {
    const { vocabSize: vocab, dim } = config;
    if (!NativeHead.fits(vocab))
      throw new RangeError(`the native head runs four vocabulary rows at a time; ${vocab} is not a multiple of 4`);
    const expected = 4 * dim + blockMatrixBytes('q8_0', vocab, dim);
    if (dim % BLOCK !== 0 || payload.byteLength !== expected) {
      throw new RangeError(
        `a head of ${vocab}×${dim} takes a ${expected}-byte payload (dim a multiple of ${BLOCK}), not ${payload.byteLength} bytes`,
      );
    }
    this.layout = headLayout(vocab, dim);
    this.memory = new Uint8Array(this.layout.bytes);
    this.norm = Float32Array.from(new Float32Array(payload.buffer, payload.byteOffset, dim));
    this.memory.set(payload.subarray(4 * dim));
  }

  async run(hidden: Float32Array, rows: BigInt64Array): Promise<Float32Array> {
    const { vocabSize: vocab, dim } = this.config;
    const logits = new Float32Array(rows.length * vocab);
    const records = this.memory.subarray(this.layout.records, this.layout.logits);
    const scratch = new Float32Array(this.memory.buffer, this.layout.logits, ROWS_PER_CALL * vocab);
    for (let from = 0; from < rows.length; from += ROWS_PER_CALL) {
      const count = Math.min(ROWS_PER_CALL, rows.length - from);
      quantizeActivations(this.normed(hidden, rows.subarray(from, from + count)), 0, count, dim, records);
      this.products(count);
      logits.set(scratch.subarray(0, count * vocab), from * vocab);
    }
    return logits;
  }

  /** RMSNorm of the picked rows, as the head graph's SimplifiedLayerNormalization. */
  private normed(hidden: Float32Array, rows: BigInt64Array): Float32Array {
    const { dim, normEps } = this.config;
    const out = new Float32Array(rows.length * dim);
    rows.forEach((row, i) => {
      const x = hidden.subarray(Number(row) * dim, (Number(row) + 1) * dim);
      let squares = 0;
      for (let d = 0; d < dim; d++) squares += x[d]! * x[d]!;
      const scale = 1 / Math.sqrt(squares / dim + normEps);
      for (let d = 0; d < dim; d++) out[i * dim + d] = x[d]! * scale * this.norm[d]!;
    });
    return out;
  }

  /** lm_head on `count` activation rows, its vocabulary rows shared with the helper thread where there are two threads. */
  private products(count: number): void {
    const { vocabSize: vocab, dim } = this.config;
    const dims = Int32Array.of(this.native.isaCode, Q8_0_ROWS_INTERLEAVED, dim, vocab, count, this.threads > 1 ? 2 : 1);
    this.native.sharedProduct(this.memory, dims, 0, this.layout.records, this.layout.logits);
  }

  async dispose(): Promise<void> {}
}
