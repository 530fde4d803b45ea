/** Maps Mistral's response fields (parsed with the provider's schemas, sirocco-api.ts) onto the AI SDK's V3 shapes. */
import type { JSONObject, LanguageModelV3FinishReason, LanguageModelV3Usage } from '@ai-sdk/provider';
import type { SiroccoUsage } from './sirocco-api.ts';

/** The SDK's nested usage; the objects exist even when the server sent no counts. */
export function convertSiroccoUsage(usage: SiroccoUsage | null | undefined): LanguageModelV3Usage {
  return {
    inputTokens: { total: usage?.prompt_tokens, noCache: usage?.prompt_tokens, cacheRead: undefined, cacheWrite: undefined },
    outputTokens: { total: usage?.completion_tokens, text: usage?.completion_tokens, reasoning: undefined },
    // Parsed from JSON, so it is JSON; the loose schema just types the extra keys as unknown.
    raw: (usage ?? undefined) as JSONObject | undefined,
  };
}

export function mapSiroccoFinishReason(finishReason: string | null | undefined): LanguageModelV3FinishReason {
  const raw = finishReason ?? undefined;
  switch (finishReason) {
    case 'stop':
      return { unified: 'stop', raw };
    case 'length':
    case 'model_length':
      return { unified: 'length', raw };
    case 'error':
      return { unified: 'error', raw };
    case 'tool_calls':
      return { unified: 'tool-calls', raw };
    default:
      return { unified: 'other', raw };
  }
}

/** `response-metadata` / `response` fields shared by both call paths. */
export function responseMetadata(value: { id: string; created: number; model: string }) {
  return { id: value.id, modelId: value.model, timestamp: new Date(value.created * 1000) };
}
