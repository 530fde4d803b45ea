/**
 * Generation for one sequence (the CLI's path): prefill the prompt, then decode token by token
 * until EOS, a stop string, max_tokens or the end of the context. The sidecar's scheduler runs
 * many sequences in one batch with the same sampler and TextStream.
 */
import { invalidRequest } from '../errors.ts';
import type { ModelRuntime } from '../engine/index.ts';
import { createRequestSampler, type ResponseFormatOptions } from '../sampling/request-sampler.ts';
import type { SamplingOptions } from '../sampling/sampler.ts';
import { TextStream } from '../text/text-stream.ts';
import type { Tokenizer } from '../text/tokenizer.ts';

export interface GenerateOptions extends SamplingOptions, ResponseFormatOptions {
  /** At most this many new tokens (EOS included); fewer if the context ends first. */
  maxTokens: number;
  stop?: string[];
  /** Aborting ends generation at the next token with the signal's reason. */
  signal?: AbortSignal;
}

export type GenerateEvent =
  | { type: 'text'; text: string }
  | { type: 'done'; finishReason: 'stop' | 'length'; promptTokens: number; completionTokens: number };

/** Checks a request before any model work, so bad values cost nothing. */
export function validateGeneration(runtime: ModelRuntime, promptIds: number[], options: GenerateOptions): void {
  if (!Number.isSafeInteger(options.maxTokens) || options.maxTokens < 1) {
    throw invalidRequest(`max_tokens must be a positive integer, got ${String(options.maxTokens)}`, 'max_tokens');
  }
  if (promptIds.length === 0) throw invalidRequest('the prompt is empty', 'messages');
  const { contextLength } = runtime.info;
  if (promptIds.length >= contextLength) {
    throw invalidRequest(
      `the prompt is ${promptIds.length} tokens, which leaves no room in the model's ${contextLength}-token context`,
      'messages',
    );
  }
  if (options.stop !== undefined && (!Array.isArray(options.stop) || options.stop.some((s) => typeof s !== 'string'))) {
    throw invalidRequest('stop must be a list of strings', 'stop');
  }
}

export async function* generate(
  runtime: ModelRuntime,
  tokenizer: Tokenizer,
  promptIds: number[],
  options: GenerateOptions,
): AsyncGenerator<GenerateEvent> {
  validateGeneration(runtime, promptIds, options);
  const sampler = createRequestSampler(tokenizer, options);
  const text = new TextStream(tokenizer, options.stop ?? []);
  const budget = Math.min(options.maxTokens, runtime.info.contextLength - promptIds.length);
  const { signal } = options;
  signal?.throwIfAborted();

  const sequence = runtime.createSequence();
  try {
    let [logits] = await runtime.forward([{ sequence, tokens: promptIds }]);
    let completionTokens = 0;
    let finishReason: 'stop' | 'length' = 'length';
    while (completionTokens < budget) {
      signal?.throwIfAborted();
      const token = sampler.sample(logits!, budget - completionTokens);
      completionTokens++;
      if (token === runtime.info.eosId) {
        finishReason = 'stop';
        break;
      }
      const step = text.push(token);
      if (step.text) yield { type: 'text', text: step.text };
      if (step.stopped) {
        finishReason = 'stop';
        break;
      }
      if (sampler.complete) {
        finishReason = 'stop';
        break;
      }
      if (completionTokens < budget) [logits] = await runtime.forward([{ sequence, tokens: [token] }]);
    }
    const rest = text.flush();
    if (rest) yield { type: 'text', text: rest };
    yield { type: 'done', finishReason, promptTokens: promptIds.length, completionTokens };
  } finally {
    runtime.releaseSequence(sequence);
  }
}
