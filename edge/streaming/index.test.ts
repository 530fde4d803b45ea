/** The SSE relay on its own: how a failed upstream read is classified, and what the client receives. */
import { describe, expect, it } from 'vitest';
import type { SseEvent } from '../../shared/sse.ts';
import { relaySseStream, type StreamOutcome } from './index.ts';

const first: SseEvent = {
  data: JSON.stringify({
    id: 'c',
    object: 'chat.completion.chunk',
    created: 1,
    model: 'm',
    choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }],
  }),
};

/** An upstream whose next read fails with `error`. */
function failingEvents(error: Error): AsyncIterator<SseEvent> {
  return {
    next: () => Promise.reject(error),
    return: async () => ({ done: true, value: undefined }),
  };
}

async function relay(events: AsyncIterator<SseEvent>, clientSignal?: AbortSignal) {
  let outcome: StreamOutcome | undefined;
  let aborted = false;
  const stream = relaySseStream({
    first,
    events,
    abortUpstream: () => {
      aborted = true;
    },
    keepAliveMs: 10_000,
    idleTimeoutMs: 30_000,
    onFinish: (finished) => {
      outcome = finished;
    },
    clientSignal,
  });
  const text = await new Response(stream).text();
  return { text, outcome, aborted };
}

describe('relaySseStream', () => {
  it('turns a failed read into an error frame, no [DONE], and an upstream failure', async () => {
    const { text, outcome, aborted } = await relay(failingEvents(new Error('connection reset')));
    expect(text.startsWith(`data: ${first.data}\n\n`)).toBe(true);
    expect(text).toContain('"object":"error"');
    expect(text).toContain('connection reset');
    expect(text).not.toContain('[DONE]');
    expect(outcome).toMatchObject({ status: 'upstream_failed' });
    expect(aborted).toBe(true);
  });

  it('calls a read that fails after the client left a client abort, not a region failure', async () => {
    const client = new AbortController();
    client.abort(new Error('The client has disconnected'));
    const { text, outcome } = await relay(failingEvents(new Error('The client has disconnected')), client.signal);
    expect(outcome).toEqual({ status: 'client_aborted', usage: null });
    expect(text).not.toContain('"object":"error"');
  });

  it('keeps the usage of the last chunk for metering', async () => {
    const chunks: SseEvent[] = [
      {
        data: JSON.stringify({
          id: 'c',
          object: 'chat.completion.chunk',
          created: 1,
          model: 'm',
          choices: [{ index: 0, delta: {}, finish_reason: 'stop' }],
          usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 },
        }),
      },
      { data: '[DONE]' },
    ];
    const events: AsyncIterator<SseEvent> = {
      next: async () => (chunks.length ? { done: false, value: chunks.shift()! } : { done: true, value: undefined }),
    };
    const { text, outcome } = await relay(events);
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    expect(outcome).toEqual({ status: 'completed', usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 } });
  });

  it('keeps the client alive while the upstream is quiet, then ends with one timeout frame once it has been idle too long', async () => {
    let aborted = false;
    let outcome: StreamOutcome | undefined;
    const silent: AsyncIterator<SseEvent> = { next: () => new Promise(() => undefined) };
    const started = Date.now();
    const stream = relaySseStream({
      first,
      events: silent,
      abortUpstream: () => {
        aborted = true;
      },
      keepAliveMs: 30,
      idleTimeoutMs: 200,
      onFinish: (finished) => {
        outcome = finished;
      },
    });
    const frames = (await new Response(stream).text()).split('\n\n').filter(Boolean);
    expect(Date.now() - started).toBeGreaterThanOrEqual(200);
    expect(frames[0]).toBe(`data: ${first.data}`);
    expect(frames.slice(1, -1).length).toBeGreaterThanOrEqual(4);
    expect(frames.slice(1, -1).every((frame) => frame === ': keep-alive')).toBe(true);
    const last = JSON.parse((frames.at(-1) ?? '').slice('data: '.length)) as { object: string; type: string };
    expect(last).toMatchObject({ object: 'error', type: 'timeout' });
    expect(outcome).toMatchObject({ status: 'upstream_failed' });
    expect(aborted).toBe(true);
  });

  it('does not take a client that reads slowly for an idle upstream', async () => {
    const rest: SseEvent[] = [{ data: first.data }, { data: '[DONE]' }];
    // Each event takes a moment to arrive, as from a network read.
    const events: AsyncIterator<SseEvent> = {
      next: () =>
        new Promise((resolve) =>
          setTimeout(() => resolve(rest.length ? { done: false, value: rest.shift()! } : { done: true, value: undefined }), 5),
        ),
    };
    let outcome: StreamOutcome | undefined;
    const stream = relaySseStream({
      first,
      events,
      abortUpstream: () => undefined,
      keepAliveMs: 10_000,
      idleTimeoutMs: 100,
      onFinish: (finished) => {
        outcome = finished;
      },
    });
    const reader = stream.getReader();
    await reader.read();
    await new Promise((resolve) => setTimeout(resolve, 250)); // the client is busy for longer than the idle timeout
    let text = '';
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) text += new TextDecoder().decode(chunk.value);
    expect(text).not.toContain('"object":"error"');
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    expect(outcome).toMatchObject({ status: 'completed' });
  });
});
