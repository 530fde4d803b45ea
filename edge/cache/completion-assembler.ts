/**
 * Rebuilds the non-stream completion from a streamed answer, so a stream can fill the cache (and so
 * the edge can answer a non-stream request from a sidecar's stream: edge/streaming/collect.ts).
 *
 * Feed it every SSE event of the response; `completion()` returns the assembled answer only if the
 * stream finished cleanly: every event was a chunk (as shared/sse.ts classifies events) with the
 * fields of Mistral's chunk schema, a finish reason other than `error` and the usage arrived, and
 * `[DONE]` came last. Anything else (an error frame, a cut stream, garbage) yields undefined and
 * nothing is cached.
 */
import { ChatCompletionChunkSchema, type ChatCompletionResponse, type FinishReason, type Usage } from '../../shared/api.ts';
import { classifySseEvent, type SseEvent } from '../../shared/sse.ts';

export interface CompletionAssembler {
  push(event: SseEvent): void;
  completion(): ChatCompletionResponse | undefined;
}

export function createCompletionAssembler(): CompletionAssembler {
  let header: { id: string; created: number; model: string } | undefined;
  let content = '';
  const toolCalls: unknown[] = [];
  let finishReason: FinishReason | null = null;
  let usage: Usage | undefined;
  let done = false;
  let broken = false;

  return {
    push(event) {
      if (broken) return;
      const frame = classifySseEvent(event);
      if (done || frame.kind === 'error' || frame.kind === 'garbage') {
        broken = true; // anything after [DONE], an error frame, or garbage
        return;
      }
      if (frame.kind === 'done') {
        done = true;
        return;
      }
      const parsed = ChatCompletionChunkSchema.safeParse(frame.data);
      if (!parsed.success) {
        broken = true; // a chunk, but not one whose fields this assembler can rebuild an answer from
        return;
      }
      const chunk = parsed.data;
      header ??= { id: chunk.id, created: chunk.created, model: chunk.model };
      for (const choice of chunk.choices) {
        if (choice.index !== 0) continue; // one choice per request (no `n`)
        content += choice.delta.content ?? '';
        if (choice.delta.tool_calls) toolCalls.push(...choice.delta.tool_calls);
        if (choice.finish_reason !== null) finishReason = choice.finish_reason;
      }
      if (chunk.usage) usage = chunk.usage;
    },
    completion() {
      if (broken || !done || !header || !usage || finishReason === null || finishReason === 'error') return undefined;
      const message =
        toolCalls.length > 0 ? { role: 'assistant' as const, content, tool_calls: toolCalls } : { role: 'assistant' as const, content };
      // The fields in the order a sidecar's non-stream answer has them: the edge serves this as one.
      return {
        id: header.id,
        object: 'chat.completion',
        created: header.created,
        model: header.model,
        choices: [{ index: 0, message, finish_reason: finishReason }],
        usage,
      };
    },
  };
}
