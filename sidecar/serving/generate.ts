/**
 * Generation for one request outside a server (`sirocco generate`, tools, tests): the scheduler
 * with a batch of one, so it decodes, validates and fails exactly as the sidecar does for the same
 * request. Aborting the signal ends the stream with the signal's reason.
 */
import type { ModelRuntime } from '../engine/index.ts';
import type { Tokenizer } from '../text/tokenizer.ts';
import type { GenerateEvent, GenerationRequest } from './decoder.ts';
import { Scheduler } from './scheduler.ts';

export type GenerateOptions = Omit<GenerationRequest, 'promptIds' | 'timeoutMs'>;

export async function* generate(
  runtime: ModelRuntime,
  tokenizer: Tokenizer,
  promptIds: number[],
  options: GenerateOptions,
): AsyncGenerator<GenerateEvent> {
  options.signal?.throwIfAborted();
  // No deadline and no admission window: one caller, waiting for its own answer.
  const scheduler = new Scheduler({
    runtime,
    tokenizer,
    maxBatch: 1,
    maxQueue: 0,
    admissionWindowMs: 0,
    requestTimeoutMs: Number.POSITIVE_INFINITY,
  });
  let finished = false;
  try {
    for await (const event of scheduler.submit({ ...options, promptIds })) {
      if (event.type === 'done') finished = true;
      yield event;
    }
  } finally {
    // A consumer that leaves early cancels the request; its KV cache is released by the time we return.
    await scheduler.whenIdle();
  }
  // The scheduler ends a cancelled request's events without a done event.
  if (!finished) options.signal?.throwIfAborted();
}
