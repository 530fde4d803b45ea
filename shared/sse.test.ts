import { describe, expect, it } from 'vitest';
import { errorBody, streamErrorFrame } from './errors.ts';
import { classifySseEvent, createSseParser, encodeSseData, readSseEvents, SSE_KEEP_ALIVE } from './sse.ts';

function streamOf(pieces: string[]): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const piece of pieces) controller.enqueue(encoder.encode(piece));
      controller.close();
    },
  });
}

async function collect(body: ReadableStream<Uint8Array>) {
  const events = [];
  for await (const event of readSseEvents(body)) events.push(event);
  return events;
}

describe('encodeSseData', () => {
  it('frames JSON and [DONE] the way every Mistral client parses them', () => {
    expect(encodeSseData({ a: 1 })).toBe('data: {"a":1}\n\n');
    expect(encodeSseData('[DONE]')).toBe('data: [DONE]\n\n');
    expect(encodeSseData('text')).toBe('data: "text"\n\n');
    expect(SSE_KEEP_ALIVE).toBe(': keep-alive\n\n');
  });
});

describe('createSseParser', () => {
  it('buffers events split across reads, even inside the JSON and the UTF-8', async () => {
    const frames = encodeSseData({ content: 'héllo' }) + SSE_KEEP_ALIVE + encodeSseData('[DONE]');
    const bytes = new TextEncoder().encode(frames);
    const pieces: Uint8Array[] = [];
    for (let i = 0; i < bytes.length; i += 3) pieces.push(bytes.slice(i, i + 3));
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        for (const piece of pieces) controller.enqueue(piece);
        controller.close();
      },
    });
    expect(await collect(body)).toEqual([{ data: '{"content":"héllo"}' }, { data: '[DONE]' }]);
  });

  it('skips comments, keeps event names, joins multi-line data and handles CRLF', () => {
    const parser = createSseParser();
    expect(parser.push(': ping\n\nevent: error\r\ndata: a\r\ndata: b\r\n\r\n')).toEqual([{ event: 'error', data: 'a\nb' }]);
  });

  it('drops an event cut off before its blank line', async () => {
    expect(await collect(streamOf(['data: {"a":1}\n\n', 'data: {"trunc']))).toEqual([{ data: '{"a":1}' }]);
  });

  it('cancels the source when the consumer stops early', async () => {
    let cancelled = false;
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new TextEncoder().encode(encodeSseData({ n: 1 }) + encodeSseData({ n: 2 })));
      },
      cancel() {
        cancelled = true;
      },
    });
    for await (const event of readSseEvents(body)) {
      expect(event.data).toBe('{"n":1}');
      break;
    }
    expect(cancelled).toBe(true);
  });
});

describe('classifySseEvent', () => {
  const chunk = {
    id: 'c',
    object: 'chat.completion.chunk',
    created: 1,
    model: 'm',
    choices: [{ index: 0, delta: { content: 'hi' }, finish_reason: null }],
  };
  const parse = (frames: string) => createSseParser().push(frames);
  const classifyData = (data: unknown) => classifySseEvent(parse(encodeSseData(data))[0]!);

  it('calls a chat.completion.chunk a chunk and hands back its JSON', () => {
    expect(classifyData(chunk)).toEqual({ kind: 'chunk', data: chunk });
    expect(classifySseEvent({ event: 'message', data: JSON.stringify(chunk) })).toEqual({ kind: 'chunk', data: chunk });
  });

  it('calls [DONE] done', () => {
    expect(classifyData('[DONE]')).toEqual({ kind: 'done' });
  });

  it("calls the project's stream error frame an error, with its message", () => {
    expect(classifyData(streamErrorFrame('internal_error', 'decoder crashed'))).toEqual({ kind: 'error', message: 'decoder crashed' });
    expect(classifyData(errorBody('rate_limited', 'slow down'))).toEqual({ kind: 'error', message: 'slow down' });
  });

  it('calls any frame with a non-null error member an error, even one that looks like a chunk', () => {
    expect(classifyData({ error: { message: 'quota exceeded', type: 'x' } })).toEqual({ kind: 'error', message: 'quota exceeded' });
    expect(classifyData({ error: 'boom' })).toEqual({ kind: 'error', message: 'boom' });
    expect(classifyData({ ...chunk, error: { code: 1 } })).toMatchObject({ kind: 'error' });
    expect(classifyData({ ...chunk, error: null })).toEqual({ kind: 'chunk', data: { ...chunk, error: null } });
  });

  it('calls an `event: error` an error whatever its data', () => {
    expect(classifySseEvent({ event: 'error', data: '{"message":"overloaded"}' })).toEqual({ kind: 'error', message: 'overloaded' });
    expect(classifySseEvent({ event: 'error', data: 'plain text' })).toEqual({ kind: 'error', message: 'plain text' });
    expect(classifySseEvent({ event: 'error', data: '' })).toEqual({ kind: 'error', message: 'upstream error event' });
    expect(classifySseEvent({ event: 'error', data: '[DONE]' })).toMatchObject({ kind: 'error' });
  });

  it('calls everything else garbage', () => {
    expect(classifySseEvent({ data: 'not json' })).toEqual({ kind: 'garbage', reason: 'not JSON: not json' });
    expect(classifyData({})).toMatchObject({ kind: 'garbage' });
    expect(classifyData({ ...chunk, object: 'chat.completion' })).toMatchObject({ kind: 'garbage' });
    expect(classifyData([chunk])).toMatchObject({ kind: 'garbage' });
    expect(classifyData(null)).toMatchObject({ kind: 'garbage' });
    expect(classifyData('text')).toMatchObject({ kind: 'garbage' });
    expect(classifySseEvent({ event: 'ping', data: JSON.stringify(chunk) })).toEqual({
      kind: 'garbage',
      reason: 'unexpected event type "ping"',
    });
    expect(classifySseEvent({ event: 'ping', data: '[DONE]' })).toMatchObject({ kind: 'garbage' });
  });

  it('quotes at most 200 characters of the data', () => {
    const frame = classifySseEvent({ data: 'x'.repeat(1000) });
    expect(frame.kind === 'garbage' && frame.reason.length).toBe('not JSON: '.length + 200);
  });
});
