/**
 * How many tokens a chat request reserves at admission, so that concurrent requests cannot together
 * spend more than the key's budget:
 *
 * - `max_tokens` set: its worst case, the prompt estimate plus `max_tokens`; admitted only if that
 *   fits beside the tokens spent and reserved (exact).
 * - `max_tokens` unset: the completion is bounded only by the model's context (the sidecar caps it
 *   at context − prompt), so the request reserves the rest of the key's budget, at most the model's
 *   context length (DEFAULT_CONTEXT_TOKENS for a model the edge has no card for, an upstream API);
 *   admitted while any budget is left. Such requests run one at a time on a small budget, side by
 *   side on a large one, and the one admitted last can overshoot by its own excess only.
 * Never more than the key's limit: a request bigger than the whole budget still runs alone in an
 * empty window, and is charged its real usage.
 *
 * The prompt estimate is an upper bound, without a tokenizer: a SentencePiece vocabulary with byte
 * fallback never needs more than one token per UTF-8 byte, and the chat template adds a few control
 * tokens per message. It over-reserves (English averages about 4 bytes per token), which only lowers
 * how many requests run at once on a nearly spent budget; an estimate that could come in low would
 * let concurrent requests overrun it. The real usage replaces the reservation when the request ends.
 */
import { type ChatCompletionRequest, LOCAL_MODELS, messageText, resolveModelId } from '../../shared/api.ts';
import type { RateLimits } from './sliding-window.ts';

/** Context length assumed for a model without a local model card (Mistral's 2023 models: 32k). */
export const DEFAULT_CONTEXT_TOKENS = 32_768;
/** Template tokens per message at most ([INST], [/INST], BOS/EOS and the spaces around them). */
const TEMPLATE_TOKENS_PER_MESSAGE = 8;

const encoder = new TextEncoder();

/** At least as many tokens as the prompt will take, without a tokenizer (see the module comment). */
export function estimatePromptTokens(request: ChatCompletionRequest): number {
  let tokens = 1; // BOS
  for (const message of request.messages) tokens += encoder.encode(messageText(message.content)).length + TEMPLATE_TOKENS_PER_MESSAGE;
  return tokens;
}

/** The reservation for `request` under `limits` (see the module comment). */
export function tokensToReserve(request: ChatCompletionRequest, limits: RateLimits): { tokens: number; upToRemaining: boolean } {
  if (request.max_tokens == null) {
    const local = resolveModelId(request.model);
    const contextTokens = local ? LOCAL_MODELS[local].maxContextLength : DEFAULT_CONTEXT_TOKENS;
    return { tokens: Math.min(contextTokens, limits.tokensPerMinute), upToRemaining: true };
  }
  return { tokens: Math.min(estimatePromptTokens(request) + request.max_tokens, limits.tokensPerMinute), upToRemaining: false };
}
