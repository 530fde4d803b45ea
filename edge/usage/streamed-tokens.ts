/**
 * The usage of a stream that ended before its usage chunk (the client left, or the region failed mid-stream):
 * the sidecars and Mistral's API report usage only in a stream's last chunk, so the edge counts what it relayed.
 * Each content chunk is one generation step (a sidecar writes one event per decoded piece), so their number is
 * the completion tokens the client received. The prompt's tokens are not known to the edge then; they are not
 * charged (an estimate would be an upper bound, and a bill must not overstate).
 */
import type { Usage } from '../../shared/api.ts';
import { classifySseEvent, type SseEvent } from '../../shared/sse.ts';

export class StreamedTokens {
  #completionTokens = 0;

  /** Counts `event` if it is a chunk carrying text. */
  observe(event: SseEvent): void {
    const frame = classifySseEvent(event);
    if (frame.kind !== 'chunk') return;
    const choices = (frame.data as { choices?: { delta?: { content?: unknown } }[] }).choices;
    const content = Array.isArray(choices) ? choices[0]?.delta?.content : undefined;
    if (typeof content === 'string' && content !== '') this.#completionTokens++;
  }

  /** `events`, counted as they are read. */
  wrap(events: AsyncIterator<SseEvent>): AsyncIterator<SseEvent> {
    return {
      next: async () => {
        const result = await events.next();
        if (!result.done) this.observe(result.value);
        return result;
      },
      return: async (value?: unknown) => (events.return ? events.return(value) : { done: true, value: undefined }),
    };
  }

  /** What was streamed, or null when no text was. */
  usage(): Usage | null {
    if (this.#completionTokens === 0) return null;
    return { prompt_tokens: 0, completion_tokens: this.#completionTokens, total_tokens: this.#completionTokens };
  }
}
