/**
 * A helper worker thread that shares chunked products with the calling thread: the WebAssembly
 * expert kernel's matrices and whole experts. (Native code shares its work with the addon's own
 * helper thread, engine/native/helper-thread.cc.)
 *
 * A job is cut into chunks that both threads claim from one shared counter; each chunk writes its
 * own outputs, so the result does not depend on who took which. A helper that wakes late (2 cores,
 * other work) only takes what is left: the calling thread never waits for it to start, only for a
 * chunk it is already running.
 *
 * Control words: JOB counts published jobs (the helper sleeps on it); CLAIM is
 * (job seq << 16 | next chunk); INFLIGHT counts helper claim attempts in progress; FAILED is set by
 * a helper that threw; COMPLETED counts the chunks the helper ran. Each job's arguments sit in one
 * of two slots (seq & 1), the chunk count last: the caller writes the next job's slot while a late
 * helper may still read the current one.
 */
import { type TransferListItem, Worker } from 'node:worker_threads';

const JOB = 0;
const CLAIM = 1;
const INFLIGHT = 2;
const FAILED = 3;
const COMPLETED = 4;
const ARGS = 5;
/** Words per argument slot: up to seven arguments, then the chunk count. */
const SLOT = 8;
/**
 * How long the helper keeps polling for the next job before it sleeps: longer than the gaps between
 * one expert's products and the next one's, shorter than an attention layer.
 */
const HELPER_SPIN_MS = 0.2;
/** A chunk takes well under a millisecond: far beyond this, the helper is gone. */
const HELPER_TIMEOUT_MS = 30_000;

/**
 * The helper's source (CommonJS, `eval`ed in the worker): `prelude` runs once with `workerData`
 * and `control` in scope; `runChunk` is the body of a function of `(args, chunk)` that runs one
 * claimed chunk, `args` being the job's arguments as published.
 */
function helperSource(prelude: string, runChunk: string): string {
  return `
const { workerData } = require('node:worker_threads');
const control = workerData.control;
${prelude}
const runChunk = (args, chunk) => { ${runChunk} };
let seenJob = Atomics.load(control, ${JOB});
for (;;) {
  // Spin a little before sleeping: a forward pass publishes jobs a few microseconds apart, and a
  // futex wake-up takes tens of them, so a sleeping helper would join each one late.
  const spinUntil = performance.now() + ${HELPER_SPIN_MS};
  while (Atomics.load(control, ${JOB}) === seenJob && performance.now() < spinUntil);
  Atomics.wait(control, ${JOB}, seenJob);
  seenJob = Atomics.load(control, ${JOB});
  for (;;) {
    Atomics.add(control, ${INFLIGHT}, 1);
    let more = false;
    try {
      const claim = Atomics.load(control, ${CLAIM});
      const base = ${ARGS} + ((claim >>> 16) & 1) * ${SLOT};
      const args = control.subarray(base, base + ${SLOT});
      const chunks = args[${SLOT - 1}];
      const chunk = claim & 0xffff;
      if (chunk < chunks && Atomics.compareExchange(control, ${CLAIM}, claim, claim + 1) === claim) {
        runChunk(args, chunk);
        Atomics.add(control, ${COMPLETED}, 1);
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
}

export interface HelperThreadOptions {
  /** Names the helper in errors ("the expert kernel"). */
  owner: string;
  /** Runs once in the worker, with `workerData` and `control` in scope. */
  prelude: string;
  /** Body of `(args, chunk) => …`: runs one claimed chunk of the job published with `args`. */
  runChunk: string;
  /** Given to the worker as `workerData` (with `control` added). */
  workerData: Record<string, unknown>;
  transferList?: TransferListItem[];
}

export class HelperThread {
  private readonly control = new Int32Array(new SharedArrayBuffer(4 * (ARGS + 2 * SLOT)));
  private readonly worker: Worker;
  private readonly owner: string;
  private seq = 0;

  constructor({ owner, prelude, runChunk, workerData, transferList }: HelperThreadOptions) {
    this.owner = owner;
    this.worker = new Worker(helperSource(prelude, runChunk), {
      eval: true,
      workerData: { ...workerData, control: this.control },
      transferList,
    });
    this.worker.unref();
  }

  /** Chunks the helper has run so far. */
  get chunksRun(): number {
    return Atomics.load(this.control, COMPLETED);
  }

  /**
   * Runs a job of `chunks` chunks, `args` (up to seven integers) as the helper's `runChunk` reads
   * them: publishes it, wakes the helper, runs chunks here with `runHere` until none is left, then
   * waits for the ones the helper is still running.
   */
  share(args: readonly number[], chunks: number, runHere: (chunk: number) => void): void {
    this.publish(args, chunks);
    for (let chunk = this.claim(chunks); chunk !== null; chunk = this.claim(chunks)) runHere(chunk);
    this.finish();
  }

  /**
   * A one-chunk job the helper should take while this thread does `first`; if it has not taken it
   * by then, `runHere` runs it on this thread.
   */
  together(args: readonly number[], first: () => void, runHere: () => void): void {
    this.publish(args, 1);
    try {
      first();
    } finally {
      if (this.claim(1) !== null) runHere();
      this.finish();
    }
  }

  private publish(args: readonly number[], chunks: number): void {
    const { control } = this;
    // No helper attempt of the previous job is in flight (finish waited for INFLIGHT).
    this.seq = (this.seq % 0x7fff) + 1;
    const slot = ARGS + (this.seq & 1) * SLOT;
    control.fill(0, slot, slot + SLOT);
    control.set(args, slot);
    control[slot + SLOT - 1] = chunks;
    Atomics.store(control, CLAIM, this.seq << 16);
    Atomics.add(control, JOB, 1);
    Atomics.notify(control, JOB);
  }

  /** The next unclaimed chunk of the published job, or null when all are taken. */
  private claim(chunks: number): number | null {
    const chunk = Atomics.add(this.control, CLAIM, 1) & 0xffff;
    return chunk < chunks ? chunk : null;
  }

  /** Waits for the chunks the helper is still running, then reports a failure it had. */
  private finish(): void {
    const { control } = this;
    const deadline = performance.now() + HELPER_TIMEOUT_MS;
    for (let inflight = Atomics.load(control, INFLIGHT); inflight !== 0; inflight = Atomics.load(control, INFLIGHT)) {
      if (Atomics.wait(control, INFLIGHT, inflight, 1000) === 'timed-out' && performance.now() > deadline) {
        throw new Error(`${this.owner}'s helper thread did not finish its chunk within ${HELPER_TIMEOUT_MS / 1000} s`);
      }
    }
    if (Atomics.exchange(control, FAILED, 0) !== 0) throw new Error(`${this.owner}'s helper thread failed on its part of a job`);
  }

  async terminate(): Promise<void> {
    await this.worker.terminate();
  }
}
