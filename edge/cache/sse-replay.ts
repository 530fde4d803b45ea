/**
 * Replays a cached completion to a streaming client in Mistral's framing: a role chunk, one chunk
 * with the whole content (no fake re-chunking: it only adds latency), a last chunk with the finish
 * reason and `usage`, then `[DONE]`. Each event is written as one stream chunk.
 */
import type { ChatCompletionChunk, ChatCompletionResponse } from '../../shared/api.ts';
import { encodeSseData, SSE_DONE, SSE_HEADERS } from '../../shared/sse.ts';

/** The chunks a stream of this completion would have carried. */
export function completionToChunks(completion: ChatCompletionResponse): ChatCompletionChunk[] {
  const { id, created, model } = completion;
  const chunk = (
    delta: ChatCompletionChunk['choices'][number]['delta'],
    finishReason: ChatCompletionChunk['choices'][number]['finish_reason'],
  ): ChatCompletionChunk => ({
    id,
    object: 'chat.completion.chunk',
    created,
    model,
    choices: [{ index: 0, delta, finish_reason: finishReason }],
  });
  const choice = completion.choices[0];
  const chunks = [chunk({ role: 'assistant', content: '' }, null)];
  const content = choice?.message.content ?? '';
  const toolCalls = choice?.message.tool_calls;
  if (content !== '' || toolCalls?.length) chunks.push(chunk(toolCalls?.length ? { content, tool_calls: toolCalls } : { content }, null));
  // Keep `choices` non-empty on the usage chunk: @ai-sdk/mistral reads choices[0].delta unguarded.
  chunks.push({ ...chunk({ content: '' }, choice?.finish_reason ?? 'stop'), usage: completion.usage });
  return chunks;
}

/** A streaming response replaying the completion, one SSE event per chunk. */
export function replayAsSse(completion: ChatCompletionResponse, headers: Record<string, string> = {}): Response {
  const encoder = new TextEncoder();
  const events = [...completionToChunks(completion).map((chunk) => encodeSseData(chunk)), encodeSseData(SSE_DONE)];
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      const next = events.shift();
      if (next === undefined) controller.close();
      else controller.enqueue(encoder.encode(next));
    },
  });
  return new Response(body, { status: 200, headers: { ...SSE_HEADERS, ...headers } });
}
