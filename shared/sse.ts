/**
 * The one SSE encoder and parser for both tiers.
 *
 * Encoding follows Mistral's framing: one `data: <json>\n\n` per event (exactly one space after the
 * colon, because several clients `substring(6)`), no `event:` lines, `data: [DONE]\n\n` last.
 * Parsing uses eventsource-parser (spec-compliant, buffers partial lines across reads) and drops
 * comments such as keep-alives. `classifySseEvent` is the one rule for what a chat-completions event is
 * (chunk, done, error frame or garbage).
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

// ─── Classifying a chat-completions stream's events ─────────────────────────────

/**
 * What one event of a chat-completions stream is. Failover, the streaming relay and the cache's
 * assembler all decide by this one classification, so an event can never count as a chunk in one
 * place and as a failure in another.
 */
export type SseFrame =
  /** A `chat.completion.chunk`; `data` is its parsed JSON (a relay forwards the event's raw text). */
  | { kind: 'chunk'; data: Record<string, unknown> }
  /** `data: [DONE]`: the stream ended cleanly. */
  | { kind: 'done' }
  /** `event: error`, or JSON with `"object":"error"` or a non-null `error` member; `message` is for people and logs. */
  | { kind: 'error'; message: string }
  /** Anything else (not JSON, JSON of another kind, an unknown event name): the stream cannot be trusted. */
  | { kind: 'garbage'; reason: string };

/** How much of an event's data a message or reason quotes. */
const EXCERPT_LENGTH = 200;

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function parseJson(data: string): { ok: true; value: unknown } | { ok: false } {
  try {
    return { ok: true, value: JSON.parse(data) };
  } catch {
    return { ok: false };
  }
}

/** The readable part of an error frame: its `message`, the nested `error.message`, a string `error`, or the raw data. */
function errorMessageOf(data: string, parsed: unknown): string {
  if (isRecord(parsed)) {
    if (typeof parsed.message === 'string') return parsed.message;
    if (isRecord(parsed.error) && typeof parsed.error.message === 'string') return parsed.error.message;
    if (typeof parsed.error === 'string') return parsed.error;
  }
  return data.slice(0, EXCERPT_LENGTH) || 'upstream error event';
}

/**
 * Classifies one event. Mistral names no events: `event: error` (other gateways' error frames) is an
 * error, and any other name but the spec's default `message` is garbage, because relaying its data
 * without the name would change its meaning.
 */
export function classifySseEvent(event: SseEvent): SseFrame {
  if (event.event === 'error') {
    const parsed = parseJson(event.data);
    return { kind: 'error', message: errorMessageOf(event.data, parsed.ok ? parsed.value : undefined) };
  }
  if (event.event !== undefined && event.event !== 'message') return { kind: 'garbage', reason: `unexpected event type "${event.event}"` };
  if (event.data === SSE_DONE) return { kind: 'done' };
  const parsed = parseJson(event.data);
  if (!parsed.ok) return { kind: 'garbage', reason: `not JSON: ${event.data.slice(0, EXCERPT_LENGTH)}` };
  const value = parsed.value;
  // `"error": null` (sent by some OpenAI-style gateways on good chunks) reports no error.
  if (isRecord(value) && (value.object === 'error' || (value.error !== undefined && value.error !== null)))
    return { kind: 'error', message: errorMessageOf(event.data, value) };
  if (isRecord(value) && value.object === 'chat.completion.chunk') return { kind: 'chunk', data: value };
  return { kind: 'garbage', reason: `not a chat.completion.chunk: ${event.data.slice(0, EXCERPT_LENGTH)}` };
}
