/**
 * One request's decoding, whoever runs the forward passes: the context and `max_tokens` rules
 * checked before any model work, then per generated token the request's own sampler (plain or
 * JSON-constrained), the text stream with its stop strings, and the finish reason. The scheduler
 * runs one of these per request in its batch; `generate()` is the scheduler with a batch of one.
 */
import { nativeSoftmaxWeights } from '../engine/index.ts';
import { invalidRequest } from '../errors.ts';
import { createRequestSampler, type RequestSampler, type ResponseFormatOptions } from '../sampling/request-sampler.ts';
import type { SamplingOptions } from '../sampling/sampler.ts';
import { TextStream } from '../text/text-stream.ts';
import type { Tokenizer } from '../text/tokenizer.ts';

export interface DecodeOptions extends SamplingOptions, ResponseFormatOptions {
  /** At most this many new tokens, EOS included; unset ⇒ the rest of the context window. */
  maxTokens?: number;
  stop?: string[];
}

export interface GenerationRequest extends DecodeOptions {
  /** The rendered chat prompt, BOS first. */
  promptIds: number[];
  /** Aborting it (client disconnect, Ctrl-C) cancels the request at the next step. */
  signal?: AbortSignal;
  /** Overrides the scheduler's per-request deadline. */
  timeoutMs?: number;
}

export type FinishReason = 'stop' | 'length';

export type GenerateEvent =
  | { type: 'text'; text: string }
  | { type: 'done'; finishReason: FinishReason; promptTokens: number; completionTokens: number };

/**
 * The request's token budget, or a 400 naming the field at fault. The prompt and `max_tokens`
 * must fit the context together: an answer is never silently shortened below what was asked.
 */
export function admittedMaxTokens(contextLength: number, promptTokens: number, options: DecodeOptions): number {
  if (promptTokens === 0) throw invalidRequest('the prompt is empty', 'messages');
  if (promptTokens >= contextLength) {
    throw invalidRequest(`the prompt is ${promptTokens} tokens but the model's context length is ${contextLength}`, 'messages');
  }
  const { maxTokens = contextLength - promptTokens, stop } = options;
  if (!Number.isSafeInteger(maxTokens) || maxTokens < 1) {
    throw invalidRequest(`max_tokens must be a positive integer, got ${String(maxTokens)}`, 'max_tokens');
  }
  if (promptTokens + maxTokens > contextLength) {
    throw invalidRequest(
      `prompt (${promptTokens} tokens) + max_tokens (${maxTokens}) exceeds the model's context length of ${contextLength} tokens`,
      'max_tokens',
    );
  }
  if (stop !== undefined && (!Array.isArray(stop) || stop.some((s) => typeof s !== 'string'))) {
    throw invalidRequest('stop must be a list of strings', 'stop');
  }
  return maxTokens;
}

/** What one generated token produced: text to emit, and the finish reason when it ended the answer. */
export interface DecodeStep {
  token: number;
  text: string;
  finishReason: FinishReason | null;
}

export class RequestDecoder {
  private readonly sampler: RequestSampler;
  private readonly text: TextStream;
  private generated = 0;

  /** Builds the sampler first, so bad sampling options fail before the request is queued. */
  constructor(
    tokenizer: Tokenizer,
    private readonly eosId: number,
    readonly maxTokens: number,
    options: DecodeOptions,
  ) {
    this.sampler = createRequestSampler(tokenizer, options, nativeSoftmaxWeights());
    this.text = new TextStream(tokenizer, options.stop ?? []);
  }

  /** Tokens generated so far, EOS included. */
  get completionTokens(): number {
    return this.generated;
  }

  /**
   * Samples the next token from its logits and applies it. EOS, a stop string, a completed JSON
   * answer or the token budget end the answer; the text of a stop string itself is never emitted.
   */
  step(logits: Float32Array): DecodeStep {
    const token = this.sampler.sample(logits, this.maxTokens - this.generated);
    this.generated += 1;
    if (token === this.eosId) return { token, text: this.text.flush(), finishReason: 'stop' };
    const { text, stopped } = this.text.push(token);
    if (stopped) return { token, text, finishReason: 'stop' };
    if (this.sampler.complete) return { token, text: text + this.text.flush(), finishReason: 'stop' };
    if (this.generated >= this.maxTokens) return { token, text: text + this.text.flush(), finishReason: 'length' };
    return { token, text, finishReason: null };
  }

  /** Ends the answer early (its deadline passed): whatever text is held back is released. */
  cutShort(): string {
    return this.text.flush();
  }
}
