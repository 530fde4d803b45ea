/**
 * The one SSE encoder and parser for both tiers.
 *
 * Encoding follows Mistral's framing: one `data: <json>\n\n` per event (exactly one space after the
 * colon, because several clients `substring(6)`), no `event:` lines, `data: [DONE]\n\n` last.
 * Parsing uses eventsource-parser (spec-compliant, buffers partial lines across reads) and drops
 * comments such as keep-alives.
 */
import { createParser, type EventSourceMessage } from 'eventsource-parser';

export const SSE_DONE = '[DONE]';

/** A comment frame: every client ignores it; it keeps idle connections and proxies alive. */
export const SSE_KEEP_ALIVE = ': keep-alive\n\n';

/** Response headers for an SSE body. `content-encoding: identity` stops wrangler dev from buffering. */
export const SSE_HEADERS = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache',
  connection: 'keep-alive',
  'content-encoding': 'identity',
} as const;

/** `data: <JSON>\n\n`, or `data: [DONE]\n\n` for the terminator. */
export function encodeSseData(data: unknown): string {
  if (data === SSE_DONE) return `data: ${SSE_DONE}\n\n`;
  return `data: ${JSON.stringify(data)}\n\n`;
}

export interface SseEvent {
  /** The `event:` name, if any (Mistral sends none). */
  event?: string;
  id?: string;
  /** Raw data; multi-line data is joined with `\n`. */
  data: string;
}

export interface SseParser {
  /** Feeds the next piece of text; returns the events it completed. */
  push(text: string): SseEvent[];
  /** Ends the input; an event without its terminating blank line is discarded, as the spec says. */
  end(): SseEvent[];
}

/** An incremental parser: call `push` with each network read, in order. */
export function createSseParser(): SseParser {
  let completed: SseEvent[] = [];
  const parser = createParser({
    onEvent(message: EventSourceMessage) {
      const event: SseEvent = { data: message.data };
      if (message.event !== undefined) event.event = message.event;
      if (message.id !== undefined) event.id = message.id;
      completed.push(event);
    },
  });
  const drain = () => {
    const events = completed;
    completed = [];
    return events;
  };
  return {
    push(text) {
      parser.feed(text);
      return drain();
    },
    end() {
      parser.reset({ consume: false });
      return drain();
    },
  };
}

/** Yields each SSE event of a byte stream as soon as its blank line arrives; breaking out cancels the stream. */
export async function* readSseEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<SseEvent> {
  const parser = createSseParser();
  const decoder = new TextDecoder();
  const reader = body.getReader();
  let finished = false;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      yield* parser.push(decoder.decode(value, { stream: true }));
    }
    finished = true;
    yield* parser.push(decoder.decode());
    yield* parser.end();
  } finally {
    // A consumer that stops early (client gone, error) cancels the source instead of leaking it.
    if (!finished) await reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
}
