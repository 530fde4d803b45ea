/**
 * Reads a sidecar's SSE stream to its end and assembles the non-stream answer from it, for a client
 * that asked for one. The edge asks sidecars for a stream even then, because a sidecar sends a
 * non-stream answer's headers only once the whole generation is done: only a stream lets the edge
 * see a hung region before the first token (failover's first-byte deadline) and mid-generation
 * (the idle deadline here, the same rule as the relay's in ./index.ts: comments do not count).
 *
 * Events are read by shared/sse.ts's one classification and assembled by the cache's assembler
 * (edge/cache/completion-assembler.ts), so the answer has exactly the shape a non-stream sidecar
 * would have sent. Every ending but `completed` has aborted the sidecar fetch.
 */
import type { ChatCompletionResponse } from '../../shared/api.ts';
import { classifySseEvent, type SseEvent } from '../../shared/sse.ts';
import { createCompletionAssembler } from '../cache/completion-assembler.ts';
import { type RelaySource, TIMED_OUT, withTimeout } from './index.ts';

export type CollectOutcome =
  | { status: 'completed'; completion: ChatCompletionResponse }
  /** The region failed mid-generation; `idle` when it went silent for the idle timeout. */
  | { status: 'upstream_failed'; problem: string; idle: boolean }
  /** The completion deadline passed before the answer was complete, with the region never silent for the idle timeout. */
  | { status: 'deadline_exceeded'; problem: string }
  | { status: 'client_aborted' };

export interface CollectOptions extends RelaySource {
  /** Silence from the upstream (no data event) after which the region counts as hung. */
  idleTimeoutMs: number;
  /** Epoch milliseconds by which the whole answer must have arrived. */
  deadline: number;
  /** The client's request signal: a read that fails after it fired is the client leaving, not the region failing. */
  clientSignal?: AbortSignal;
}

export async function collectSseCompletion({
  first,
  events,
  abortUpstream,
  idleTimeoutMs,
  deadline,
  clientSignal,
}: CollectOptions): Promise<CollectOutcome> {
  const assembler = createCompletionAssembler();
  const release = () => void events.return?.(undefined).catch(() => undefined);
  const stop = <T extends CollectOutcome>(outcome: T, problem: string): T => {
    abortUpstream(new Error(problem));
    release();
    return outcome;
  };
  const fail = (problem: string, idle = false) => stop({ status: 'upstream_failed', problem, idle }, problem);

  let event: SseEvent = first;
  for (;;) {
    const frame = classifySseEvent(event);
    if (frame.kind === 'error') return fail(`error frame mid-generation: ${frame.message}`);
    if (frame.kind === 'garbage') return fail(`garbage mid-generation: ${frame.reason}`);
    assembler.push(event);
    if (frame.kind === 'done') {
      release(); // frees the sidecar body
      const completion = assembler.completion();
      if (completion) return { status: 'completed', completion };
      return fail('the stream ended without a complete answer (a chunk it could not read, or no finish reason or usage)');
    }

    const readIssuedAt = Date.now();
    const idleDeadline = readIssuedAt + idleTimeoutMs;
    const pending = events.next();
    pending.catch(() => undefined); // abandoned on a timeout; its rejection after the abort is expected
    let result: IteratorResult<SseEvent> | typeof TIMED_OUT;
    try {
      result = await withTimeout(pending, Math.max(0, Math.min(idleDeadline, deadline) - readIssuedAt));
    } catch (error) {
      if (clientSignal?.aborted) return stop({ status: 'client_aborted' }, 'client disconnected');
      return fail(error instanceof Error ? error.message : String(error));
    }
    if (result === TIMED_OUT) {
      if (clientSignal?.aborted) return stop({ status: 'client_aborted' }, 'client disconnected');
      if (idleDeadline < deadline) return fail(`no data from the upstream for ${idleTimeoutMs} ms`, true);
      const problem = 'the answer was not complete by the completion deadline';
      return stop({ status: 'deadline_exceeded', problem }, problem);
    }
    if (result.done) return fail('the stream ended without [DONE]');
    event = result.value;
  }
}
