/**
 * Continuous batching over one model: every active request is one entry of a single
 * `runtime.forward` call per step, new requests join between steps, long prompts are prefilled in
 * chunks (a per-step token budget) so they do not stall running streams, and each request keeps
 * its own decoder (decoder.ts: sampler, text stream, stop strings, finish reasons) — so a seeded
 * request produces the same text whatever else shares its batch.
 *
 * Backpressure: at most `maxBatch` sequences run and at most `maxQueue` more wait; beyond that
 * `submit` throws a 503 SidecarError with a retry hint. Cancellation (the request's AbortSignal or
 * the consumer leaving its event loop) takes effect at the next step boundary and releases the
 * sequence's KV memory. Forward calls are serialised: the engine is not re-entrant.
 */
import type { ForwardEntry, ModelRuntime, Sequence } from '../engine/index.ts';
import { invalidRequest, SidecarError } from '../errors.ts';
import type { Tokenizer } from '../text/tokenizer.ts';
import {
  admittedMaxTokens,
  type DecodeStep,
  type FinishReason,
  type GenerateEvent,
  type GenerationRequest,
  RequestDecoder,
} from './decoder.ts';

export interface SchedulerOptions {
  runtime: ModelRuntime;
  tokenizer: Tokenizer;
  /** Sequences decoded together in one step. */
  maxBatch: number;
  /** Requests allowed to wait for a free slot. */
  maxQueue: number;
  /** Prompt tokens prefilled per step across all prefilling requests. */
  prefillChunkTokens?: number;
  /** Wall-clock budget per request: waiting past it ⇒ 503; generating past it ends with finish_reason "length". */
  requestTimeoutMs?: number;
  observer?: SchedulerObserver;
  /**
   * How long an idle scheduler waits for more requests before its first step (default 5 ms): a
   * burst that starts together prefills together and never stalls its own decode steps.
   */
  admissionWindowMs?: number;
  /** Called with errors the step loop could not attribute to a request (never expected). */
  onLoopError?: (error: unknown) => void;
}

/** Hooks for metrics; every method is optional so tests and tools can observe only what they need. */
export interface SchedulerObserver {
  step?(info: { batchSize: number; decodeEntries: number; prefillTokens: number; seconds: number }): void;
  firstToken?(seconds: number): void;
  interToken?(seconds: number): void;
  finished?(info: { promptTokens: number; completionTokens: number; finishReason: FinishReason | 'cancelled' | 'error' }): void;
}

export interface SchedulerStats {
  queueDepth: number;
  activeSequences: number;
  /** Generated tokens per second over the last few seconds. */
  tokensPerSecond: number;
}

const DEFAULT_PREFILL_CHUNK_TOKENS = 64;
const DEFAULT_REQUEST_TIMEOUT_MS = 300_000;
const DEFAULT_ADMISSION_WINDOW_MS = 5;
const THROUGHPUT_WINDOW_MS = 10_000;

/** A request's life inside the scheduler. */
interface Job {
  readonly id: number;
  readonly promptIds: number[];
  readonly decoder: RequestDecoder;
  readonly events: EventChannel<GenerateEvent>;
  readonly submittedAt: number;
  readonly deadline: number;
  sequence: Sequence | null;
  /** Prompt tokens already in the KV cache. */
  prefilled: number;
  /** The token to feed next once the prompt is in. */
  nextToken: number;
  lastTokenAt: number;
  cancelled: boolean;
  done: boolean;
  detachSignal: () => void;
}

/** A planned forward entry and the job it advances. */
interface PlannedEntry {
  job: Job;
  entry: ForwardEntry;
  /** True when this entry carries prompt tokens rather than the last sampled token. */
  prefill: boolean;
  /** True when this entry's logits give the job its next token. */
  samples: boolean;
}

export class Scheduler {
  readonly maxBatch: number;
  readonly maxQueue: number;
  private readonly runtime: ModelRuntime;
  private readonly tokenizer: Tokenizer;
  private readonly prefillChunkTokens: number;
  private readonly requestTimeoutMs: number;
  private readonly admissionWindowMs: number;
  private readonly observer: SchedulerObserver;
  private readonly onLoopError: (error: unknown) => void;
  private readonly waiting: Job[] = [];
  private readonly active: Job[] = [];
  private readonly throughput: Array<{ at: number; tokens: number }> = [];
  private readonly idleWaiters: Array<() => void> = [];
  /** Jobs in the forward running now: their KV caches are in use and are released after it. */
  private inFlight = new Set<Job>();
  private readonly createdAt = performance.now();
  private nextJobId = 1;
  private looping = false;
  private closedReason: string | null = null;

  constructor(options: SchedulerOptions) {
    if (!Number.isInteger(options.maxBatch) || options.maxBatch < 1) throw new RangeError('maxBatch must be an integer ≥ 1');
    if (!Number.isInteger(options.maxQueue) || options.maxQueue < 0) throw new RangeError('maxQueue must be an integer ≥ 0');
    this.runtime = options.runtime;
    this.tokenizer = options.tokenizer;
    this.maxBatch = options.maxBatch;
    this.maxQueue = options.maxQueue;
    this.prefillChunkTokens = Math.max(1, options.prefillChunkTokens ?? DEFAULT_PREFILL_CHUNK_TOKENS);
    this.requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.admissionWindowMs = options.admissionWindowMs ?? DEFAULT_ADMISSION_WINDOW_MS;
    this.observer = options.observer ?? {};
    this.onLoopError = options.onLoopError ?? (() => {});
  }

  /**
   * Admits a request or throws synchronously: 400 when it cannot fit the context window, 503 when
   * the queue is full or the scheduler is shutting down. The returned iterator yields text deltas
   * and ends with one `done` event; leaving it early cancels the request.
   */
  submit(request: GenerationRequest): AsyncGenerator<GenerateEvent> {
    if (this.closedReason !== null) throw overloaded(this.closedReason, 1);
    const maxTokens = admittedMaxTokens(this.runtime.info.contextLength, request.promptIds.length, request);
    const decoder = new RequestDecoder(this.tokenizer, this.runtime.info.eosId, maxTokens, request);
    const freeSlots = this.maxBatch - this.active.length;
    if (this.waiting.length - freeSlots >= this.maxQueue) {
      throw overloaded(
        `the sidecar is at capacity (${this.maxBatch} running, ${this.maxQueue} queued); retry shortly`,
        this.retryAfterSeconds(),
      );
    }
    if (request.signal?.aborted) throw invalidRequest('the request was cancelled before it started');

    const now = performance.now();
    const job: Job = {
      id: this.nextJobId++,
      promptIds: request.promptIds,
      decoder,
      events: new EventChannel<GenerateEvent>(),
      submittedAt: now,
      deadline: now + (request.timeoutMs ?? this.requestTimeoutMs),
      sequence: null,
      prefilled: 0,
      nextToken: -1,
      lastTokenAt: now,
      cancelled: false,
      done: false,
      detachSignal: () => {},
    };
    if (request.signal) {
      const signal = request.signal;
      const onAbort = () => this.cancel(job);
      signal.addEventListener('abort', onAbort, { once: true });
      job.detachSignal = () => signal.removeEventListener('abort', onAbort);
    }
    this.waiting.push(job);
    this.kick();
    return this.consume(job);
  }

  stats(): SchedulerStats {
    return { queueDepth: this.waiting.length, activeSequences: this.active.length, tokensPerSecond: this.tokensPerSecond() };
  }

  /** Resolves once no request is running or waiting. */
  whenIdle(): Promise<void> {
    if (!this.looping && this.active.length === 0 && this.waiting.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * Stops admission (new requests get 503), waits up to `graceMs` for running and queued requests
   * to finish, then ends whatever is left with an error and resolves once the engine is idle.
   */
  async shutdown(graceMs: number): Promise<void> {
    this.closedReason ??= 'the sidecar is shutting down';
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), graceMs)));
    const outcome = await Promise.race([this.whenIdle().then(() => 'idle' as const), graceOver]);
    clearTimeout(timer);
    if (outcome === 'timeout') {
      const error = overloaded('the sidecar shut down before this request finished', 1);
      for (const job of [...this.waiting, ...this.active]) this.fail(job, error);
      await this.whenIdle();
    }
  }

  /** A rough wait: the queue ahead drains at about maxBatch requests per average request time. */
  private retryAfterSeconds(): number {
    return Math.min(60, Math.max(1, Math.ceil(this.waiting.length / this.maxBatch)));
  }

  // ── the step loop ───────────────────────────────────────────────────────────

  private kick(): void {
    if (this.looping) return;
    this.looping = true;
    this.loop()
      .catch((error: unknown) => {
        this.onLoopError(error);
        for (const job of [...this.waiting, ...this.active]) this.fail(job, error);
      })
      .finally(() => {
        this.looping = false;
        // A request may have arrived between the last check and now (it would not have kicked).
        if (this.waiting.length > 0) this.kick();
        else for (const resolve of this.idleWaiters.splice(0)) resolve();
      });
  }

  private async loop(): Promise<void> {
    // Requests that arrive together (a burst of connections) should start in the same step.
    await new Promise<void>((resolve) => setTimeout(resolve, this.admissionWindowMs));
    while (this.active.length > 0 || this.waiting.length > 0) {
      this.reap();
      this.admit();
      // Decode and prefill run as separate forwards: the engine pads every entry of a batch to the
      // longest one, so a prompt chunk inside a decode batch would multiply the decode work.
      const decoding = this.active.filter((job) => job.prefilled === job.promptIds.length);
      if (decoding.length > 0) {
        await this.step(
          decoding.map((job) => ({ job, entry: { sequence: job.sequence!, tokens: [job.nextToken] }, prefill: false, samples: true })),
        );
      }
      const prefill = this.planPrefill(decoding.length > 0);
      if (prefill.length > 0) await this.step(prefill);
      // Let HTTP handlers, aborts and writes run between steps.
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  /** One batched forward; its logits advance each planned job. */
  private async step(plan: PlannedEntry[]): Promise<void> {
    const started = performance.now();
    let logits: Float32Array[];
    this.inFlight = new Set(plan.map((planned) => planned.job));
    try {
      logits = await this.runtime.forward(plan.map((planned) => planned.entry));
    } catch (error) {
      this.endFlight();
      if (plan.length === 1) this.fail(plan[0]!.job, error);
      else await this.isolate(plan);
      return;
    }
    this.endFlight();
    const finishedAt = performance.now();
    this.observer.step?.({
      batchSize: plan.length,
      decodeEntries: plan.filter((planned) => !planned.prefill).length,
      prefillTokens: plan.reduce((sum, planned) => sum + (planned.prefill ? planned.entry.tokens.length : 0), 0),
      seconds: (finishedAt - started) / 1000,
    });
    this.applyStep(plan, logits, finishedAt);
  }

  /**
   * The engine rejected a batch (e.g. a missing expert file that one request's tokens route to).
   * A failed forward commits nothing, so each entry runs again alone: only the requests that fail
   * on their own get the error, the rest of the batch goes on (one slow step, on this error path only).
   */
  private async isolate(plan: PlannedEntry[]): Promise<void> {
    for (const planned of plan) {
      if (planned.job.done) continue;
      this.inFlight = new Set([planned.job]);
      let logits: Float32Array[];
      try {
        logits = await this.runtime.forward([planned.entry]);
      } catch (error) {
        this.endFlight();
        this.fail(planned.job, error);
        continue;
      }
      this.endFlight();
      this.applyStep([planned], logits, performance.now());
    }
  }

  /** Drops cancelled and expired requests before the next step. */
  private reap(): void {
    const now = performance.now();
    for (const job of [...this.active]) {
      if (job.cancelled) this.finish(job, 'cancelled');
      else if (now >= job.deadline) this.finish(job, 'length', { cutShort: true });
    }
    for (const job of [...this.waiting]) {
      if (now >= job.deadline) this.fail(job, overloaded('timed out waiting for a free slot', this.retryAfterSeconds()));
    }
  }

  private admit(): void {
    while (this.active.length < this.maxBatch && this.waiting.length > 0) {
      const job = this.waiting.shift()!;
      job.sequence = this.runtime.createSequence();
      this.active.push(job);
    }
  }

  /**
   * The next prompt chunks, oldest request first. Each entry takes at most `prefillChunkTokens`
   * tokens. While other requests are decoding, one step prefills at most that many tokens in all
   * (so a long prompt delays running streams by one chunk per step, never by its whole length);
   * with nobody decoding, every waiting prompt advances at once.
   */
  private planPrefill(othersDecoding: boolean): PlannedEntry[] {
    const plan: PlannedEntry[] = [];
    let budget = othersDecoding ? this.prefillChunkTokens : this.prefillChunkTokens * this.maxBatch;
    for (const job of this.active) {
      const remaining = job.promptIds.length - job.prefilled;
      if (remaining === 0 || job.done || job.cancelled) continue;
      // The budget starts ≥ 1, so the oldest prefilling request always progresses.
      const take = Math.min(remaining, this.prefillChunkTokens, budget);
      if (take === 0) break;
      budget -= take;
      const tokens = job.promptIds.slice(job.prefilled, job.prefilled + take);
      plan.push({ job, entry: { sequence: job.sequence!, tokens }, prefill: true, samples: take === remaining });
    }
    return plan;
  }

  private applyStep(plan: PlannedEntry[], logits: Float32Array[], now: number): void {
    let generated = 0;
    for (const [index, { job, entry, samples }] of plan.entries()) {
      if (job.done) continue; // failed or cancelled while the step ran
      if (job.prefilled < job.promptIds.length) job.prefilled += entry.tokens.length;
      if (!samples) continue;
      generated += 1;
      const rowLogits = logits[index];
      if (!rowLogits) {
        this.fail(job, new Error(`the engine returned ${logits.length} logit rows for ${plan.length} entries`));
        continue;
      }
      try {
        this.acceptToken(job, job.decoder.step(rowLogits), now);
      } catch (error) {
        this.fail(job, error); // e.g. JSON mode with a vocabulary that cannot continue: this request only
      }
    }
    if (generated > 0) this.recordThroughput(now, generated);
  }

  private acceptToken(job: Job, { token, text, finishReason }: DecodeStep, now: number): void {
    if (job.decoder.completionTokens === 1) this.observer.firstToken?.((now - job.submittedAt) / 1000);
    else this.observer.interToken?.((now - job.lastTokenAt) / 1000);
    job.lastTokenAt = now;
    if (text) job.events.push({ type: 'text', text });
    if (finishReason) this.finish(job, finishReason);
    else job.nextToken = token;
  }

  // ── ending requests ─────────────────────────────────────────────────────────

  private cancel(job: Job): void {
    if (job.done) return;
    job.cancelled = true;
    const queued = this.waiting.indexOf(job);
    // A queued request holds no KV memory: drop it now so its slot frees at once.
    if (queued >= 0) this.finish(job, 'cancelled');
  }

  /** Ends a request; `cutShort` releases text the decoder still holds (a deadline, not the decoder, ended it). */
  private finish(job: Job, reason: FinishReason | 'cancelled', { cutShort = false } = {}): void {
    if (job.done) return;
    const completionTokens = job.decoder.completionTokens;
    if (reason !== 'cancelled') {
      const rest = cutShort ? job.decoder.cutShort() : '';
      if (rest) job.events.push({ type: 'text', text: rest });
      job.events.push({ type: 'done', finishReason: reason, promptTokens: job.promptIds.length, completionTokens });
    }
    this.release(job);
    job.events.end();
    this.observer.finished?.({ promptTokens: job.promptIds.length, completionTokens, finishReason: reason });
  }

  private fail(job: Job, error: unknown): void {
    if (job.done) return;
    this.release(job);
    job.events.fail(error);
    this.observer.finished?.({ promptTokens: job.promptIds.length, completionTokens: job.decoder.completionTokens, finishReason: 'error' });
  }

  private release(job: Job): void {
    job.done = true;
    job.detachSignal();
    const queued = this.waiting.indexOf(job);
    if (queued >= 0) this.waiting.splice(queued, 1);
    const running = this.active.indexOf(job);
    if (running >= 0) this.active.splice(running, 1);
    // A job ended mid-step (shutdown) keeps its KV cache until the engine is done with it.
    if (job.sequence && !this.inFlight.has(job)) {
      this.runtime.releaseSequence(job.sequence);
      job.sequence = null;
    }
  }

  /** The forward returned: release the caches of jobs that ended while it ran. */
  private endFlight(): void {
    const flown = this.inFlight;
    this.inFlight = new Set();
    for (const job of flown) if (job.done) this.release(job);
  }

  /** The consumer side; a consumer that stops iterating early cancels its request. */
  private async *consume(job: Job): AsyncGenerator<GenerateEvent> {
    try {
      yield* job.events;
    } finally {
      this.cancel(job);
    }
  }

  // ── throughput for the load report ──────────────────────────────────────────

  private recordThroughput(at: number, tokens: number): void {
    this.throughput.push({ at, tokens });
    while (this.throughput.length > 0 && at - this.throughput[0]!.at > THROUGHPUT_WINDOW_MS) this.throughput.shift();
  }

  private tokensPerSecond(): number {
    const now = performance.now();
    const recent = this.throughput.filter((sample) => now - sample.at <= THROUGHPUT_WINDOW_MS);
    if (recent.length === 0) return 0;
    const windowMs = Math.min(THROUGHPUT_WINDOW_MS, now - this.createdAt);
    const tokens = recent.reduce((sum, sample) => sum + sample.tokens, 0);
    return windowMs > 0 ? (tokens * 1000) / windowMs : 0;
  }
}

function overloaded(message: string, retryAfterSeconds: number): SidecarError {
  return new SidecarError('overloaded', message, { retryAfterSeconds });
}

/** A single-consumer async queue: the step loop pushes, the HTTP handler iterates. */
class EventChannel<T> implements AsyncIterable<T> {
  private readonly buffer: T[] = [];
  private waiter: { resolve: (result: IteratorResult<T>) => void; reject: (error: unknown) => void } | null = null;
  private ended = false;
  private error: { value: unknown } | null = null;

  push(value: T): void {
    if (this.ended) return;
    if (this.waiter) {
      const { resolve } = this.waiter;
      this.waiter = null;
      resolve({ value, done: false });
    } else this.buffer.push(value);
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.settleWaiter();
  }

  fail(error: unknown): void {
    if (this.ended) return;
    this.error = { value: error };
    this.ended = true;
    this.settleWaiter();
  }

  private settleWaiter(): void {
    if (!this.waiter || this.buffer.length > 0) return;
    const { resolve, reject } = this.waiter;
    this.waiter = null;
    if (this.error) reject(this.error.value);
    else resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => {
        if (this.buffer.length > 0) return Promise.resolve({ value: this.buffer.shift()!, done: false });
        if (this.error) return Promise.reject(this.error.value);
        if (this.ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
      },
    };
  }
}
