/**
 * Relays a sidecar's SSE stream to the client, one event per write, without re-serialising chunks
 * (unknown fields such as `usage` survive: Portkey #1259).
 *
 * - Keep-alive: when the sidecar is silent for `keepAliveMs` (a long prefill), a `: keep-alive`
 *   comment goes out so proxies and clients keep the connection.
 * - Idle upstream: when no data event (comments do not count) has come for `idleTimeoutMs`, a hung
 *   sidecar is assumed: one `timeout` error frame, the stream closes with no `[DONE]`, the sidecar
 *   fetch is aborted and `onFinish` reports `upstream_failed` (the caller counts it on the circuit).
 * - Upstream failure mid-stream (an error frame or garbage, as shared/sse.ts classifies events; a cut
 *   connection; an end without `[DONE]`): one `data: {"object":"error",…}` frame, then the stream
 *   closes with NO `[DONE]` (Portkey #1797).
 * - Client abort: cancelling the response aborts the sidecar fetch.
 * - `onFinish` runs once with the outcome and the usage from the last chunk (for metering).
 *
 * `relayPendingSseStream` covers a sidecar that answers only after a long prefill: the client gets
 * a 200 with keep-alive comments while failover is still choosing a region (comments are not data,
 * so nothing is replayed), then the relay; a failure before the first chunk becomes an error frame.
 *
 * A client that asked for one JSON answer gets a sidecar's stream read to its end by ./collect.ts,
 * under the same idle rule.
 */
import type { Usage } from '../../shared/api.ts';
import { streamErrorFrame } from '../../shared/errors.ts';
import { classifySseEvent, encodeSseData, SSE_DONE, SSE_KEEP_ALIVE, type SseEvent } from '../../shared/sse.ts';

export type StreamOutcome =
  | { status: 'completed'; usage: Usage | null }
  | { status: 'upstream_failed'; usage: Usage | null; problem: string }
  | { status: 'client_aborted'; usage: Usage | null };

export interface RelaySource {
  /** The event that committed the response (already read by failover). */
  first: SseEvent;
  events: AsyncIterator<SseEvent>;
  abortUpstream(reason?: unknown): void;
}

export interface RelayOptions extends RelaySource {
  keepAliveMs: number;
  /** Silence from the upstream (no data event) after which the stream fails with a `timeout` frame. */
  idleTimeoutMs: number;
  onFinish(outcome: StreamOutcome): void;
  /** The client's request signal: a read that fails after it fired is the client leaving, not the region failing. */
  clientSignal?: AbortSignal;
}

/** A failure before the first chunk, as the error frame a committed stream reports it with. */
export class StreamStartError extends Error {
  constructor(
    readonly type: string,
    message: string,
    readonly code: string | null = null,
  ) {
    super(message);
    this.name = 'StreamStartError';
  }
}

const encoder = new TextEncoder();
const KEEP_ALIVE_BYTES = encoder.encode(SSE_KEEP_ALIVE);
const TIMED_OUT = Symbol('timed out');

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T | typeof TIMED_OUT> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<typeof TIMED_OUT>((resolve) => {
    timer = setTimeout(() => resolve(TIMED_OUT), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function usageOf(chunk: Record<string, unknown>): Usage | null {
  const usage = chunk.usage as Partial<Usage> | null | undefined;
  return usage && typeof usage.total_tokens === 'number' ? (usage as Usage) : null;
}

export function relaySseStream({
  first,
  events,
  abortUpstream,
  keepAliveMs,
  idleTimeoutMs,
  onFinish,
  clientSignal,
}: RelayOptions): ReadableStream<Uint8Array> {
  let usage: Usage | null = null;
  let finished = false;
  let pending: Promise<IteratorResult<SseEvent>> | null = null;
  // Idle time is counted from when the relay asked the upstream for an event, not from the last one
  // it relayed: a client that reads slowly must not make a working upstream look idle.
  let readIssuedAt = Date.now();
  let lastWriteAt = readIssuedAt;

  const finish = (outcome: StreamOutcome) => {
    if (finished) return;
    finished = true;
    onFinish(outcome);
  };

  const failUpstream = (
    controller: ReadableStreamDefaultController<Uint8Array>,
    problem: string,
    frame = streamErrorFrame('upstream_error', `Upstream failed mid-stream: ${problem}`),
  ) => {
    controller.enqueue(encoder.encode(encodeSseData(frame)));
    controller.close();
    abortUpstream(new Error(problem));
    finish({ status: 'upstream_failed', usage, problem });
  };

  /** Writes one event; returns false once the stream has ended. */
  const relay = (controller: ReadableStreamDefaultController<Uint8Array>, event: SseEvent): boolean => {
    const frame = classifySseEvent(event);
    switch (frame.kind) {
      case 'done':
        controller.enqueue(encoder.encode(encodeSseData(SSE_DONE)));
        controller.close();
        void events.return?.(undefined).catch(() => undefined); // releases the sidecar body
        finish({ status: 'completed', usage });
        return false;
      case 'error':
        failUpstream(controller, frame.message);
        return false;
      case 'garbage':
        failUpstream(controller, frame.reason);
        return false;
      case 'chunk':
        usage = usageOf(frame.data) ?? usage;
        controller.enqueue(encoder.encode(`data: ${event.data}\n\n`));
        return true;
    }
  };

  return new ReadableStream<Uint8Array>({
    start(controller) {
      relay(controller, first);
    },
    async pull(controller) {
      // Loops until it has written something: a pull that returns without enqueuing is not called again.
      for (;;) {
        if (finished) return;
        if (!pending) {
          pending = events.next();
          pending.catch(() => undefined); // observed below; avoids an unhandled rejection after cancel
          readIssuedAt = Date.now();
        }
        const idleDeadline = readIssuedAt + idleTimeoutMs;
        const keepAliveDue = lastWriteAt + keepAliveMs;
        let result: IteratorResult<SseEvent> | typeof TIMED_OUT;
        try {
          result = await withTimeout(pending, Math.max(0, Math.min(idleDeadline, keepAliveDue) - Date.now()));
        } catch (error) {
          pending = null;
          if (finished) return;
          if (clientSignal?.aborted) {
            controller.close(); // nobody is reading any more
            finish({ status: 'client_aborted', usage });
            return;
          }
          failUpstream(controller, error instanceof Error ? error.message : String(error));
          return;
        }
        if (finished) return;
        if (result === TIMED_OUT) {
          const now = Date.now();
          if (now >= idleDeadline) {
            const problem = `no data from the upstream for ${idleTimeoutMs} ms`;
            failUpstream(controller, problem, streamErrorFrame('timeout', `Upstream stopped mid-stream: ${problem}`));
            return;
          }
          if (now >= keepAliveDue) {
            controller.enqueue(KEEP_ALIVE_BYTES);
            lastWriteAt = now;
            return;
          }
          continue; // a timer that fired a little early
        }
        pending = null;
        lastWriteAt = Date.now();
        if (result.done) failUpstream(controller, 'the stream ended without [DONE]');
        else relay(controller, result.value);
        return;
      }
    },
    cancel(reason) {
      abortUpstream(reason ?? new Error('client disconnected'));
      void events.return?.(undefined).catch(() => undefined);
      finish({ status: 'client_aborted', usage });
    },
  });
}

export interface PendingRelayOptions {
  /** Resolves when failover has a stream; rejects (ideally with StreamStartError) when none can start. */
  pending: Promise<RelaySource>;
  keepAliveMs: number;
  idleTimeoutMs: number;
  onFinish(outcome: StreamOutcome): void;
  clientSignal?: AbortSignal;
}

export function relayPendingSseStream({
  pending,
  keepAliveMs,
  idleTimeoutMs,
  onFinish,
  clientSignal,
}: PendingRelayOptions): ReadableStream<Uint8Array> {
  let inner: ReadableStreamDefaultReader<Uint8Array> | null = null;
  pending.catch(() => undefined); // observed in pull; avoids an unhandled rejection after cancel

  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (!inner) {
        let source: RelaySource | typeof TIMED_OUT;
        try {
          source = await withTimeout(pending, keepAliveMs);
        } catch (error) {
          if (clientSignal?.aborted) {
            controller.close();
            onFinish({ status: 'client_aborted', usage: null });
            return;
          }
          const frame =
            error instanceof StreamStartError
              ? streamErrorFrame(error.type, error.message, error.code)
              : streamErrorFrame('upstream_error', error instanceof Error ? error.message : String(error));
          controller.enqueue(encoder.encode(encodeSseData(frame)));
          controller.close();
          onFinish({ status: 'upstream_failed', usage: null, problem: frame.message });
          return;
        }
        if (source === TIMED_OUT) return controller.enqueue(KEEP_ALIVE_BYTES);
        inner = relaySseStream({ ...source, keepAliveMs, idleTimeoutMs, onFinish, clientSignal }).getReader();
      }
      const { done, value } = await inner.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    cancel(reason) {
      if (inner) return inner.cancel(reason);
      // Still choosing a region: tear down whatever it ends up with.
      void pending.then(
        (source) => {
          source.abortUpstream(reason ?? new Error('client disconnected'));
          void source.events.return?.(undefined).catch(() => undefined);
        },
        () => undefined,
      );
      onFinish({ status: 'client_aborted', usage: null });
    },
  });
}

/** Resolves with the promise's value, or TIMED_OUT first if it takes longer than `ms`. */
export { TIMED_OUT, withTimeout };
