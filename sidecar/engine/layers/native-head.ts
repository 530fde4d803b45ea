/**
 * Mixtral's head (final RMSNorm and lm_head) in the native addon's Q8_0 product, on the store's
 * head file (layer-store.ts), its vocabulary rows shared with a helper thread.
 *
 * Why: onnxruntime's int8 head took 1.7–2.2 ms of a ~7 ms resident decode token on the bench shape
 * (34 MB, cold after the experts, one session run), where this one reads it on both cores in
 * 1.1–1.3 ms. Same 8 bits: Q8_0 blocks of 32 with an fp16 scale against MatMulNBits' int8 blocks
 * of 32; activations are rounded per block of 32 to int8 in both.
 *
 * The rows of lm_head are cut into chunks that both threads claim from one shared counter; each
 * chunk writes its own logits, so the bits do not depend on who ran which, and a helper that wakes
 * late (2 busy cores) only takes what is left. Control words: JOB counts published products (the
 * helper sleeps on it); CLAIM is (job seq << 16 | next chunk); INFLIGHT counts helper claim
 * attempts in progress; FAILED is set by a helper that could not run its chunk; HELPER_CHUNKS counts
 * the chunks the helper ran. A job's row count
 * sits in one of two slots (seq & 1), so the next job's never overwrites one a late helper reads.
 */
import { Worker } from 'node:worker_threads';
import { modelError } from '../../errors.ts';
import { BLOCK, BLOCK_BYTES } from '../../formats/blocks.ts';
import type { ModelConfig } from '../../formats/model-config.ts';

export type HeadShape = Pick<ModelConfig, 'vocabSize' | 'dim' | 'normEps'>;

import { ACTIVATION_RECORD_BYTES, quantizeActivations } from '../experts/block-kernel.ts';
import type { NativeGemm, NativeProduct } from '../experts/native-gemm.ts';

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
/** How long the helper polls for the next job before it sleeps (a decode step publishes one). */
const HELPER_SPIN_MS = 0.2;
/** A chunk takes well under a millisecond: far beyond this, the helper is gone. */
const HELPER_TIMEOUT_MS = 30_000;

const JOB = 0;
const CLAIM = 1;
const INFLIGHT = 2;
const FAILED = 3;
const HELPER_CHUNKS = 4; // chunks the helper has run, for tests and operators
const ROWS = 5; // two slots: the job's activation rows, by seq & 1

function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

/** Where the shared memory's parts start: lm_head's blocks, the activation records, the logits. */
interface HeadLayout {
  records: number;
  logits: number;
  bytes: number;
}

function headLayout(vocab: number, dim: number): HeadLayout {
  const weights = vocab * (dim / BLOCK) * BLOCK_BYTES.q8_0;
  const records = alignUp(weights, 64);
  const logits = alignUp(records + ROWS_PER_CALL * (dim / BLOCK) * ACTIVATION_RECORD_BYTES, 64);
  return { records, logits, bytes: logits + 4 * ROWS_PER_CALL * vocab };
}

const HELPER_SOURCE = `
const { workerData } = require('node:worker_threads');
const { control, memory, path, isa, cols, vocab, chunkRows, records, logits } = workerData;
let run = null;
try { run = require(path)['q8_0_' + isa]; } catch {}
let seenJob = Atomics.load(control, ${JOB});
for (;;) {
  const spinUntil = performance.now() + ${HELPER_SPIN_MS};
  while (Atomics.load(control, ${JOB}) === seenJob && performance.now() < spinUntil);
  Atomics.wait(control, ${JOB}, seenJob);
  seenJob = Atomics.load(control, ${JOB});
  for (;;) {
    Atomics.add(control, ${INFLIGHT}, 1);
    let more = false;
    try {
      const claim = Atomics.load(control, ${CLAIM});
      const rows = Atomics.load(control, ${ROWS} + ((claim >>> 16) & 1));
      const chunk = claim & 0xffff;
      const chunks = Math.ceil(vocab / chunkRows);
      if (chunk < chunks && Atomics.compareExchange(control, ${CLAIM}, claim, claim + 1) === claim) {
        if (!run) throw new Error('no native product');
        run(memory, cols, 0, chunk * chunkRows, Math.min(vocab, (chunk + 1) * chunkRows), rows, records, logits, vocab);
        Atomics.add(control, ${HELPER_CHUNKS}, 1);
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

export class NativeHead implements LogitHead {
  private readonly memory: Uint8Array;
  private readonly layout: HeadLayout;
  private readonly norm: Float32Array;
  private readonly product: NativeProduct;
  private readonly control = new Int32Array(new SharedArrayBuffer(4 * (ROWS + 2)));
  private readonly helper: Worker | null;
  private readonly chunkRows: number;
  private seq = 0;

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
    if (vocab % 4 !== 0) throw new RangeError(`the native head runs four vocabulary rows at a time; ${vocab} is not a multiple of 4`);
    const expected = 4 * dim + vocab * (dim / BLOCK) * BLOCK_BYTES.q8_0;
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
        ? new Worker(HELPER_SOURCE, {
            eval: true,
            workerData: {
              control: this.control,
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
    this.helper?.unref();
  }

  /** Chunks of lm_head the helper thread has run so far (0 with one thread). */
  get helperChunks(): number {
    return Atomics.load(this.control, HELPER_CHUNKS);
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
    const chunks = Math.ceil(vocab / chunkRows);
    if (!this.helper) {
      this.product(this.memory, dim, 0, 0, vocab, count, records, logits, vocab);
      return;
    }
    const { control } = this;
    // No helper attempt of the previous job is in flight: the last call waited for INFLIGHT.
    this.seq = (this.seq % 0x7fff) + 1;
    Atomics.store(control, ROWS + (this.seq & 1), count);
    Atomics.store(control, CLAIM, this.seq << 16);
    Atomics.add(control, JOB, 1);
    Atomics.notify(control, JOB);
    for (let chunk = Atomics.add(control, CLAIM, 1) & 0xffff; chunk < chunks; chunk = Atomics.add(control, CLAIM, 1) & 0xffff) {
      this.product(this.memory, dim, 0, chunk * chunkRows, Math.min(vocab, (chunk + 1) * chunkRows), count, records, logits, vocab);
    }
    // Every chunk is claimed; wait for the ones the helper is still running.
    const deadline = performance.now() + HELPER_TIMEOUT_MS;
    for (let inflight = Atomics.load(control, INFLIGHT); inflight !== 0; inflight = Atomics.load(control, INFLIGHT)) {
      if (Atomics.wait(control, INFLIGHT, inflight, 1000) === 'timed-out' && performance.now() > deadline) {
        throw modelError(`the native head's helper thread did not finish its chunk within ${HELPER_TIMEOUT_MS / 1000} s`);
      }
    }
    if (Atomics.exchange(control, FAILED, 0) !== 0) throw modelError("the native head's helper thread failed on its part of lm_head");
  }

  async dispose(): Promise<void> {
    await this.helper?.terminate();
  }
}
