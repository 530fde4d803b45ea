import { describe, expect, it } from 'vitest';
import { SSE_KEEP_ALIVE, createSseParser, encodeSseData, readSseEvents } from './sse.ts';

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
