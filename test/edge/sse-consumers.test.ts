/**
 * Failover, the streaming relay and the cache's assembler read the same SSE events; they must agree on
 * what each one is (shared/sse.ts `classifySseEvent`): a chunk is relayed, committed and cached, `[DONE]`
 * ends the stream cleanly, and an error frame or garbage is a failure everywhere.
 */
import { describe, expect, it } from 'vitest';
import { createCompletionAssembler } from '../../edge/cache/completion-assembler.ts';
import { CircuitBreaker } from '../../edge/routing/circuit-breaker.ts';
import { forwardWithFailover, type Target } from '../../edge/routing/failover.ts';
import { relaySseStream, type StreamOutcome } from '../../edge/streaming/index.ts';
import { streamErrorFrame } from '../../shared/errors.ts';
import { encodeSseData, SSE_DONE, type SseEvent } from '../../shared/sse.ts';

const header = { id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm' };
const roleChunk: SseEvent = {
  data: JSON.stringify({ ...header, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] }),
};
const contentChunk: SseEvent = {
  data: JSON.stringify({ ...header, choices: [{ index: 0, delta: { content: 'hi' }, finish_reason: null }] }),
};
const lastChunk: SseEvent = {
  data: JSON.stringify({
    ...header,
    choices: [{ index: 0, delta: { content: '' }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
  }),
};
const done: SseEvent = { data: SSE_DONE };

const failures: [string, SseEvent][] = [
  ['the project error frame', { data: JSON.stringify(streamErrorFrame('internal_error', 'decoder crashed')) }],
  ['a frame with an error member', { data: JSON.stringify({ error: { message: 'quota exceeded' } }) }],
  ['an `event: error`', { event: 'error', data: 'overloaded' }],
  ['data that is not JSON', { data: 'oops' }],
  ['JSON that is not a chunk', { data: '{}' }],
  ['a chunk under an unknown event name', { event: 'ping', data: contentChunk.data }],
];

function sseBody(events: SseEvent[]): string {
  return events.map((event) => `${event.event ? `event: ${event.event}\n` : ''}data: ${event.data}\n\n`).join('');
}

function target(name: string): Target {
  return {
    name,
    url: `http://${name}.test/v1/chat/completions`,
    headers: async () => ({}),
    breaker: new CircuitBreaker({ failureThreshold: 5, cooldownMs: 1000 }),
  };
}

/** Which target failover commits to when the first answers with `firstEvent` and the second with a good stream. */
async function committedTarget(firstEvent: SseEvent): Promise<string> {
  const bodies: Record<string, string> = {
    'http://a.test/v1/chat/completions': sseBody([firstEvent, contentChunk, lastChunk, done]),
    'http://b.test/v1/chat/completions': sseBody([roleChunk, contentChunk, lastChunk, done]),
  };
  const fakeFetch: typeof fetch = async (input) =>
    new Response(bodies[String(input)], { headers: { 'content-type': 'text/event-stream' } });
  const result = await forwardWithFailover({
    targets: [target('a'), target('b')],
    body: '{}',
    stream: true,
    requestId: 'req.2026:abc',
    clientSignal: undefined,
    timeoutMs: 5000,
    fetch: fakeFetch,
  });
  if (result.kind === 'stream') await result.events.return?.(undefined);
  return result.target.name;
}

/** What the relay writes and reports for a stream whose second event is `event`. */
async function relayed(event: SseEvent): Promise<{ text: string; outcome: StreamOutcome | undefined }> {
  const rest = [event, lastChunk, done];
  let outcome: StreamOutcome | undefined;
  const stream = relaySseStream({
    first: roleChunk,
    events: { next: async () => (rest.length ? { done: false, value: rest.shift()! } : { done: true, value: undefined }) },
    abortUpstream: () => undefined,
    keepAliveMs: 10_000,
    idleTimeoutMs: 30_000,
    onFinish: (finished) => {
      outcome = finished;
    },
  });
  return { text: await new Response(stream).text(), outcome };
}

function assembles(events: SseEvent[]): boolean {
  const assembler = createCompletionAssembler();
  for (const event of events) assembler.push(event);
  return assembler.completion() !== undefined;
}

describe('failover, relay and cache agree on each SSE event', () => {
  it('a chunk: committed, relayed unchanged, cached', async () => {
    expect(await committedTarget(roleChunk)).toBe('a');
    const { text, outcome } = await relayed(contentChunk);
    expect(text).toContain(`data: ${contentChunk.data}\n\n`);
    expect(text.endsWith(encodeSseData(SSE_DONE))).toBe(true);
    expect(outcome).toMatchObject({ status: 'completed' });
    expect(assembles([roleChunk, contentChunk, lastChunk, done])).toBe(true);
  });

  it('[DONE]: commits, ends the relay cleanly, and nothing may follow it in a cached stream', async () => {
    expect(await committedTarget(done)).toBe('a');
    const { text, outcome } = await relayed(done);
    expect(text.endsWith(encodeSseData(SSE_DONE))).toBe(true);
    expect(outcome).toMatchObject({ status: 'completed' });
    expect(assembles([roleChunk, lastChunk, done, contentChunk])).toBe(false);
  });

  it.each(failures)('%s: fails over, ends the relay with an error frame and no [DONE], is never cached', async (_name, event) => {
    expect(await committedTarget(event)).toBe('b');
    const { text, outcome } = await relayed(event);
    expect(text).toContain('"object":"error"');
    expect(text).not.toContain(SSE_DONE);
    expect(outcome).toMatchObject({ status: 'upstream_failed' });
    expect(assembles([roleChunk, event, lastChunk, done])).toBe(false);
  });
});
