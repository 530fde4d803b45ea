/**
 * Mixtral's head (final RMSNorm and lm_head) in the native addon's Q8_0 product, on the store's
 * head file (layer-store.ts), its vocabulary rows shared with a helper thread.
 *
 * Why: onnxruntime's int8 head took 1.7–2.2 ms of a ~7 ms resident decode token on the bench shape
 * (34 MB, cold after the experts, one session run), where this one reads it on both cores in
 * 1.1–1.6 ms (timed alternately in the decode loop). Same 8 bits: Q8_0 blocks of 32 with an fp16
 * scale against MatMulNBits' int8 blocks of 32; activations are rounded per block of 32 to int8 in
 * both.
 *
 * The rows of lm_head are cut into chunks that this thread and a helper thread claim
 * (helper-thread.ts); each chunk writes its own logits, so the bits do not depend on who ran which,
 * and a helper that wakes late (2 busy cores) only takes what is left.
 */
import { BLOCK, blockMatrixBytes } from '../../formats/blocks.ts';
import type { ModelConfig } from '../../formats/model-config.ts';
import { ACTIVATION_RECORD_BYTES, alignUp, quantizeActivations } from '../experts/block-kernel.ts';
import type { NativeGemm, NativeProduct } from '../experts/native-gemm.ts';
import { HelperThread } from '../helper-thread.ts';

export type HeadShape = Pick<ModelConfig, 'vocabSize' | 'dim' | 'normEps'>;

/** Logits [rows.length, vocab] for the hidden rows `rows` (flat indices into hidden [batch·seq, dim]). */
export interface LogitHead {
  run(hidden: Float32Array, rows: BigInt64Array): Promise<Float32Array>;
  dispose(): Promise<void>;
}

/** Rows per product call: bounds the logits scratch (ROWS_PER_CALL × vocab floats). */
const ROWS_PER_CALL = 16;
/** Vocabulary rows per chunk, at most: 16 chunks of a 32000-token head, each ~0.1 ms at decode. */
const MAX_CHUNK_ROWS = 2048;
/** Smaller heads are cut into this many chunks, so both threads take part. */
const MIN_CHUNKS = 8;

/** Where the shared memory's parts start: lm_head's blocks, the activation records, the logits. */
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

/** The helper's side: the native product on the same shared memory, over one chunk of vocabulary rows. */
const HELPER_PRELUDE = `
const { memory, path, isa, cols, vocab, chunkRows, records, logits } = workerData;
const run = require(path)['q8_0_' + isa];`;
const HELPER_RUN_CHUNK = `run(memory, cols, 0, chunk * chunkRows, Math.min(vocab, (chunk + 1) * chunkRows), args[0], records, logits, vocab);`;

export class NativeHead implements LogitHead {
  /** Whether this head runs a vocabulary of this size: the product takes four rows at a time. */
  static fits(vocabSize: number): boolean {
    return vocabSize % 4 === 0;
  }

  private readonly memory: Uint8Array;
  private readonly layout: HeadLayout;
  private readonly norm: Float32Array;
  private readonly product: NativeProduct;
  private readonly helper: HelperThread | null;
  private readonly chunkRows: number;

  /**
   * @param payload the head file's payload: the final norm f32[dim], then lm_head's Q8_0 blocks [vocab, dim]
   * @param threads 2: this thread and a helper thread; 1: this thread alone (the same bits)
   */
  constructor(
    payload: Uint8Array,
    private readonly config: HeadShape,
    native: NativeGemm,
    threads: number,
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
    this.chunkRows = Math.min(MAX_CHUNK_ROWS, alignUp(Math.ceil(vocab / MIN_CHUNKS), 4));
    this.layout = headLayout(vocab, dim);
    this.memory = new Uint8Array(new SharedArrayBuffer(this.layout.bytes));
    this.norm = Float32Array.from(new Float32Array(payload.buffer, payload.byteOffset, dim));
    this.memory.set(payload.subarray(4 * dim));
    this.product = native.product('q8_0');
    this.helper =
      threads > 1
        ? new HelperThread({
            owner: 'the native head',
            prelude: HELPER_PRELUDE,
            runChunk: HELPER_RUN_CHUNK,
            workerData: {
              memory: this.memory,
              path: native.path,
              isa: native.isa,
              cols: dim,
              vocab,
              chunkRows: this.chunkRows,
              records: this.layout.records,
              logits: this.layout.logits,
            },
          })
        : null;
  }

  /** Chunks of lm_head the helper thread has run so far (0 with one thread). */
  get helperChunks(): number {
    return this.helper?.chunksRun ?? 0;
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

  /** lm_head on `count` activation rows, chunks of vocabulary rows shared with the helper. */
  private products(count: number): void {
    const { vocabSize: vocab, dim } = this.config;
    const { records, logits } = this.layout;
    const { chunkRows } = this;
    const chunk = (index: number) =>
      this.product(this.memory, dim, 0, index * chunkRows, Math.min(vocab, (index + 1) * chunkRows), count, records, logits, vocab);
    if (!this.helper) this.product(this.memory, dim, 0, 0, vocab, count, records, logits, vocab);
    else this.helper.share([count], Math.ceil(vocab / chunkRows), chunk);
  }

  async dispose(): Promise<void> {
    await this.helper?.terminate();
  }
}
