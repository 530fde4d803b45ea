/**
 * Sends one request to the first target that answers, failing over to the next before anything is
 * committed to the client. For streams the first byte is the first SSE event: nothing is committed
 * until a target has produced a chunk or `[DONE]` (never an error frame or garbage, as shared/sse.ts
 * classifies events), so a failing region is never half-replayed (Portkey #1047, #1797).
 *
 * What an answer means for the request and for the region's circuit breaker. A request must never be
 * able to take a region down, so only the region's own failures count:
 *
 * | answer                                         | client gets               | next region | circuit           |
 * | ---------------------------------------------- | ------------------------- | ----------- | ----------------- |
 * | 2xx                                            | the answer                | no          | success           |
 * | 4xx but 401/403/429 (the request's fault)      | the answer, as is         | no          | success (alive)   |
 * | 500 with a Mistral error body whose type is a  | the body, with its type's | no          | success (alive)   |
 * |   request fault (`invalid_request_error`, …)   |   4xx status              |             |                   |
 * | 401/403 (the edge's own credentials refused)   | —                         | yes         | 1 failure         |
 * | 429/503 (overloaded)                           | —                         | yes         | 1/4 of a failure  |
 * | any other 5xx (500, 502, 504, …)               | —                         | yes         | 1 failure         |
 * | connection error, timeout, error frame first   | —                         | yes         | 1 failure         |
 *
 * Overload weighs a quarter: a sidecar that sheds load is alive and recovers by itself, and opening
 * its circuit as fast as a crashed one's would push its whole share onto the other regions at once
 * (a cascade). Any success resets the count, so a busy sidecar that still serves some requests stays
 * in rotation; one that answers nothing but 429/503 (say, models still loading) opens after four
 * times as many answers in a row as a crash needs.
 *
 * When every attempted region timed out the request fails with 504 `timeout`, otherwise 503
 * `overloaded`. A client that leaves aborts the attempt in flight (stream or not) and counts against
 * no region.
 */
import { ERROR_STATUS, MistralErrorBodySchema } from '../../shared/errors.ts';
import { classifySseEvent, readSseEvents, type SseEvent } from '../../shared/sse.ts';
import { EdgeError } from '../errors.ts';
import type { CircuitBreaker } from './circuit-breaker.ts';

export interface Target {
  /** Region name, or `upstream:<model>`: for errors and logs. */
  name: string;
  /** Full URL of the chat-completions endpoint. */
  url: string;
  /** Credentials for this body: the HMAC signature for sidecars, the operator's key upstream. */
  headers(body: string): Promise<Record<string, string>>;
  breaker: CircuitBreaker;
}

export type ForwardResult =
  /** A complete non-stream answer (2xx, or a 4xx that is the caller's fault), already read. */
  | { kind: 'body'; target: Target; status: number; headers: Headers; text: string; attempts: number }
  /** A stream whose first event has arrived; `events` yields the rest, `abort` tears it down. */
  | {
      kind: 'stream';
      target: Target;
      headers: Headers;
      first: SseEvent;
      events: AsyncIterator<SseEvent>;
      abort(reason?: unknown): void;
      attempts: number;
    };

export interface ForwardOptions {
  targets: Target[];
  body: string;
  stream: boolean;
  requestId: string;
  /** Fires when the client disconnects (request.signal under enable_request_signal). */
  clientSignal: AbortSignal | undefined;
  /** Per attempt: until the first SSE event for streams, until the whole body otherwise. */
  timeoutMs: number;
  fetch: typeof fetch;
  now?: () => number;
  onAttemptFailed?: (target: Target, problem: string) => void;
}

/** How much an overload answer (429/503) counts on a circuit, against 1 for a crash; see the header. */
export const OVERLOAD_FAILURE_WEIGHT = 0.25;

/** Error types that name the request's own fault, with the status a client should see for each. */
const REQUEST_FAULT_STATUS = new Map<string, number>(
  (['invalid_request_error', 'invalid_model', 'not_found', 'payload_too_large', 'validation_error'] as const).map((type) => [
    type,
    ERROR_STATUS[type],
  ]),
);

/** The edge's own credentials refused (401/403), or the region failing (5xx but overload). */
const isRegionFailureStatus = (status: number) => status === 401 || status === 403 || (status >= 500 && status !== 503);
const isOverloadStatus = (status: number) => status === 429 || status === 503;

/** The status to relay a 500 with when its body says the request was at fault (an older or buggy sidecar), else null. */
function requestFaultStatus(text: string): number | null {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return null;
  }
  const parsed = MistralErrorBodySchema.safeParse(json);
  return parsed.success ? (REQUEST_FAULT_STATUS.get(parsed.data.type) ?? null) : null;
}

class AttemptFailed extends Error {
  constructor(
    message: string,
    /** How much this counts on the region's circuit (1 for a failure of the region itself). */
    readonly weight = 1,
    readonly timedOut = false,
  ) {
    super(message);
  }
}

const clientClosed = () => new EdgeError('invalid_request_error', 'Client closed the request', { status: 499 });

async function attempt(target: Target, options: ForwardOptions, attempts: number): Promise<ForwardResult> {
  if (options.clientSignal?.aborted) throw clientClosed(); // gone already: spend no sidecar time
  const controller = new AbortController();
  const onClientAbort = () => controller.abort(options.clientSignal?.reason);
  options.clientSignal?.addEventListener('abort', onClientAbort, { once: true });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort(new Error('first-byte timeout'));
  }, options.timeoutMs);
  const detach = () => options.clientSignal?.removeEventListener('abort', onClientAbort);

  try {
    const response = await options.fetch(target.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-request-id': options.requestId, ...(await target.headers(options.body)) },
      body: options.body,
      signal: controller.signal,
    });
    if (response.status === 500) {
      const text = await response.text();
      const status = requestFaultStatus(text);
      if (status === null) throw new AttemptFailed(`HTTP ${response.status}`);
      clearTimeout(timer);
      detach();
      return { kind: 'body', target, status, headers: response.headers, text, attempts };
    }
    if (isRegionFailureStatus(response.status) || isOverloadStatus(response.status)) {
      await response.body?.cancel().catch(() => undefined);
      throw new AttemptFailed(`HTTP ${response.status}`, isOverloadStatus(response.status) ? OVERLOAD_FAILURE_WEIGHT : 1);
    }
    const isEventStream = (response.headers.get('content-type') ?? '').includes('text/event-stream');
    if (!options.stream || !response.ok || !isEventStream || !response.body) {
      const text = await response.text();
      clearTimeout(timer);
      detach();
      return { kind: 'body', target, status: response.status, headers: response.headers, text, attempts };
    }
    const events = readSseEvents(response.body)[Symbol.asyncIterator]();
    const first = await events.next();
    clearTimeout(timer);
    if (first.done) throw new AttemptFailed('stream ended before its first event');
    // A chunk commits the stream, and so does `[DONE]` (an empty answer); an error frame or garbage moves on.
    const frame = classifySseEvent(first.value);
    if (frame.kind === 'error' || frame.kind === 'garbage') {
      await events.return?.(undefined);
      const problem =
        frame.kind === 'error' ? `error frame before the first chunk: ${frame.message}` : `garbage before the first chunk: ${frame.reason}`;
      throw new AttemptFailed(problem);
    }
    return {
      kind: 'stream',
      target,
      headers: response.headers,
      first: first.value,
      events,
      attempts,
      abort(reason) {
        detach();
        controller.abort(reason);
      },
    };
  } catch (error) {
    clearTimeout(timer);
    detach();
    if (options.clientSignal?.aborted) throw clientClosed();
    if (error instanceof AttemptFailed) throw error;
    if (timedOut) throw new AttemptFailed(`no response within ${options.timeoutMs} ms`, 1, true);
    throw new AttemptFailed(`connection failed: ${error instanceof Error ? error.message : String(error)}`);
  }
}

/** Tries each target whose circuit admits a request, in order; throws 504 `timeout` or 503 `overloaded` when all fail. */
export async function forwardWithFailover(options: ForwardOptions): Promise<ForwardResult> {
  const now = options.now ?? Date.now;
  const problems: string[] = [];
  let attempts = 0;
  let everyAttemptTimedOut = true;
  for (const target of options.targets) {
    if (!target.breaker.tryAcquire(now())) {
      problems.push(`${target.name}: circuit open`);
      continue;
    }
    attempts += 1;
    try {
      const result = await attempt(target, options, attempts);
      target.breaker.recordSuccess();
      return result;
    } catch (error) {
      if (!(error instanceof AttemptFailed)) {
        target.breaker.release();
        throw error;
      }
      target.breaker.recordFailure(now(), error.weight);
      everyAttemptTimedOut &&= error.timedOut;
      problems.push(`${target.name}: ${error.message}`);
      options.onAttemptFailed?.(target, error.message);
    }
  }
  const reasons =
    problems.length > 0 ? problems.join('; ') : 'no region serving this model is configured, or every such region has an open circuit';
  if (attempts > 0 && everyAttemptTimedOut) throw new EdgeError('timeout', `No region answered in time (${reasons})`);
  throw new EdgeError('overloaded', `No region could serve the request (${reasons})`, { retryAfterSeconds: 1 });
}
