/**
 * Scheduler events → Mistral's chat responses: one `chat.completion` object, or an SSE stream of
 * `chat.completion.chunk` events (role chunk first, one event per write, usage in the last chunk,
 * `data: [DONE]`). A failure after the stream started becomes one `{"object":"error",…}` frame and
 * the stream ends without `[DONE]`, so no client mistakes a cut stream for a complete one.
 */
import type { ChatCompletionChunk, ChatCompletionResponse, Usage } from '../../shared/api.ts';
import { streamErrorFrame } from '../../shared/errors.ts';
import { encodeSseData, SSE_DONE } from '../../shared/sse.ts';
import type { GenerateEvent } from '../serving/decoder.ts';
import { errorBodyOf, toSidecarError } from './error-response.ts';

export interface CompletionIdentity {
  id: string;
  /** Unix seconds. */
  created: number;
  model: string;
}

export type DoneEvent = Extract<GenerateEvent, { type: 'done' }>;

/** How a generation ended: its done event, or the error that cut it, or null when the client left. */
export type GenerationOutcome = { done: DoneEvent } | { error: unknown } | { cancelled: true };

function usageOf(done: DoneEvent): Usage {
  return {
    prompt_tokens: done.promptTokens,
    completion_tokens: done.completionTokens,
    total_tokens: done.promptTokens + done.completionTokens,
  };
}

/** Drains the events into one non-streaming response; null when the client left (errors propagate). */
export async function collectCompletion(
  events: AsyncIterable<GenerateEvent>,
  identity: CompletionIdentity,
): Promise<{ response: ChatCompletionResponse; done: DoneEvent } | null> {
  let content = '';
  for await (const event of events) {
    if (event.type === 'text') {
      content += event.text;
      continue;
    }
    const response: ChatCompletionResponse = {
      ...identity,
      object: 'chat.completion',
      choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: event.finishReason }],
      usage: usageOf(event),
    };
    return { response, done: event };
  }
  return null;
}

function chunk(
  identity: CompletionIdentity,
  delta: ChatCompletionChunk['choices'][number]['delta'],
  finishReason: 'stop' | 'length' | null = null,
): ChatCompletionChunk {
  return { ...identity, object: 'chat.completion.chunk', choices: [{ index: 0, delta, finish_reason: finishReason }] };
}

/**
 * The SSE body. `first` is the already-awaited first event (so errors before any token still get
 * a real HTTP status); `events` continues after it. Cancelling the body cancels the generation.
 */
export function completionStream(
  first: GenerateEvent,
  events: AsyncGenerator<GenerateEvent>,
  identity: CompletionIdentity,
  onOutcome: (outcome: GenerationOutcome) => void,
  /** Named in an error frame, so the caller can quote it to the operator. */
  requestId?: string,
): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  let pending: GenerateEvent | null = first;
  let roleSent = false;
  let settled = false;
  const settle = (outcome: GenerationOutcome) => {
    if (settled) return;
    settled = true;
    onOutcome(outcome);
  };

  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const send = (data: unknown) => controller.enqueue(encoder.encode(encodeSseData(data)));
      if (!roleSent) {
        roleSent = true;
        return send(chunk(identity, { role: 'assistant', content: '' }));
      }
      let event: GenerateEvent;
      if (pending) {
        event = pending;
        pending = null;
      } else {
        try {
          const next = await events.next();
          if (next.done) {
            settle({ cancelled: true });
            return controller.close();
          }
          event = next.value;
        } catch (error) {
          const body = errorBodyOf(toSidecarError(error), requestId);
          send(streamErrorFrame(body.type, body.message, body.code));
          settle({ error });
          return controller.close();
        }
      }
      if (event.type === 'text') return send(chunk(identity, { content: event.text }));
      send({ ...chunk(identity, { content: '' }, event.finishReason), usage: usageOf(event) });
      send(SSE_DONE);
      settle({ done: event });
      controller.close();
    },
    cancel() {
      settle({ cancelled: true });
      // Not awaited: a pending next() would hold it until the next step; the request signal already cancelled it.
      events.return(undefined).catch(() => undefined);
    },
  });
}
