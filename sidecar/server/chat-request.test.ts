import { describe, expect, it } from 'vitest';
import type { ChatCompletionRequest } from '../../shared/api.ts';
import type { Tokenizer } from '../text/tokenizer.ts';
import { toGenerationRequest } from './chat-request.ts';

/** One token per character: prompt lengths are easy to reason about. */
const tokenizer: Tokenizer = {
  vocabSize: 256,
  bosId: 1,
  eosId: 2,
  encode: (text) => Array.from(text, (char) => char.charCodeAt(0) % 256),
  decode: (ids) => String.fromCharCode(...ids),
};

function request(content: string, maxTokens?: number): ChatCompletionRequest {
  return { model: 'mistral-tiny', messages: [{ role: 'user', content }], ...(maxTokens === undefined ? {} : { max_tokens: maxTokens }) };
}

describe('toGenerationRequest max_tokens', () => {
  it('leaves an unset max_tokens unset on a model without a default (the rest of the context)', () => {
    expect(toGenerationRequest(request('Hi'), tokenizer, { contextLength: 8192 }).maxTokens).toBeUndefined();
  });

  it("applies the model's default to an unset max_tokens", () => {
    expect(toGenerationRequest(request('Hi'), tokenizer, { defaultMaxTokens: 256, contextLength: 8192 }).maxTokens).toBe(256);
  });

  it('keeps an explicit max_tokens, above or below the default', () => {
    expect(toGenerationRequest(request('Hi', 1000), tokenizer, { defaultMaxTokens: 256, contextLength: 8192 }).maxTokens).toBe(1000);
    expect(toGenerationRequest(request('Hi', 3), tokenizer, { defaultMaxTokens: 256, contextLength: 8192 }).maxTokens).toBe(3);
  });

  it('leaves it unset when the prompt leaves less room than the default, so the rest of the context applies', () => {
    const generation = toGenerationRequest(request('x'.repeat(100)), tokenizer, { defaultMaxTokens: 256, contextLength: 300 });
    expect(generation.promptIds.length).toBeGreaterThan(300 - 256);
    expect(generation.maxTokens).toBeUndefined();
  });
});
