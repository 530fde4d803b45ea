/**
 * Sends one request to the first target that answers, failing over to the next on a connection
 * error, a retryable status (5xx, 429, or 401/403 meaning the edge's own credentials were refused)
 * or a timeout before the first byte. For streams the first byte is the first SSE event: nothing
 * is committed to the client until a target has produced a chunk or `[DONE]` (never an error frame
 * or garbage, as shared/sse.ts classifies events), so a failing region is never half-replayed
 * (Portkey #1047, #1797).
 */
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

const RETRYABLE_STATUS = (status: number) => status >= 500 || status === 429 || status === 401 || status === 403;

class AttemptFailed extends Error {}

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
    if (RETRYABLE_STATUS(response.status)) {
      await response.body?.cancel().catch(() => undefined);
      throw new AttemptFailed(`HTTP ${response.status}`);
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
    if (timedOut) throw new AttemptFailed(`no response within ${options.timeoutMs} ms`);
    throw new AttemptFailed(`connection failed: ${error instanceof Error ? error.message : String(error)}`);
  }
}

/** Tries each target whose circuit admits a request, in order; throws 503 `overloaded` when all fail. */
export async function forwardWithFailover(options: ForwardOptions): Promise<ForwardResult> {
  const now = options.now ?? Date.now;
  const problems: string[] = [];
  let attempts = 0;
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
      target.breaker.recordFailure(now());
      problems.push(`${target.name}: ${error.message}`);
      options.onAttemptFailed?.(target, error.message);
    }
  }
  const reasons =
    problems.length > 0 ? problems.join('; ') : 'no region serving this model is configured, or every such region has an open circuit';
  throw new EdgeError('overloaded', `No region could serve the request (${reasons})`, { retryAfterSeconds: 1 });
}
