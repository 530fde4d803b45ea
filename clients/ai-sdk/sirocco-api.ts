/**
 * The provider's own view of Mistral's public chat API: the request fields it sends and loose schemas for the fields
 * it reads back. The package ships on its own, so it owns these wire types instead of importing the server's
 * schemas; the in-repo tests check that every request it builds passes the server's strict request schema.
 */
// `zod/v4` is the same API in zod 3.25+ and zod 4, the range the AI SDK itself accepts.
import * as z from 'zod/v4';

export interface SiroccoChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export type SiroccoResponseFormat =
  | { type: 'json_object' }
  | { type: 'json_schema'; json_schema: { name: string; description?: string; schema: Record<string, unknown> } };

/** `POST /v1/chat/completions`: only the fields this provider sets. */
export interface SiroccoChatRequest {
  model: string;
  messages: SiroccoChatMessage[];
  max_tokens?: number;
  temperature?: number;
  top_p?: number;
  random_seed?: number;
  stop?: string[];
  safe_prompt?: boolean;
  response_format?: SiroccoResponseFormat;
  stream?: boolean;
}

const finishReasonSchema = z.string().nullish();

export const siroccoUsageSchema = z.looseObject({
  prompt_tokens: z.number(),
  completion_tokens: z.number(),
  total_tokens: z.number(),
});
export type SiroccoUsage = z.infer<typeof siroccoUsageSchema>;

export const siroccoChatResponseSchema = z.looseObject({
  id: z.string(),
  created: z.number(),
  model: z.string(),
  choices: z.array(
    z.looseObject({
      message: z.looseObject({ content: z.string().nullish() }),
      finish_reason: finishReasonSchema,
    }),
  ),
  usage: siroccoUsageSchema.nullish(),
});

export const siroccoChatChunkSchema = z.looseObject({
  id: z.string(),
  created: z.number(),
  model: z.string(),
  choices: z.array(
    z.looseObject({
      delta: z.looseObject({ content: z.string().nullish() }),
      finish_reason: finishReasonSchema,
    }),
  ),
  /** Present on the last chunk only. */
  usage: siroccoUsageSchema.nullish(),
});
export type SiroccoChatChunk = z.infer<typeof siroccoChatChunkSchema>;

/** Mistral's error body, `{"object":"error","message",…}`: as a response body and as a frame inside a stream. */
export const siroccoErrorBodySchema = z.looseObject({
  object: z.literal('error'),
  message: z.string(),
  type: z.string().nullish(),
  param: z.string().nullish(),
  code: z.string().nullish(),
});
