/**
 * The public chat API (Mistral's), as zod 4 schemas with inferred types, plus the model catalogue.
 *
 * Requests are strict (`z.strictObject`): unknown fields fail with 422 "Extra inputs are not
 * permitted", as Mistral has done since 2024-01-11. Accepted besides the 2023 fields: `safe_prompt`
 * (every Python client sends it), openai-style `stream_options` and `user`, `stop`,
 * `response_format`, `presence_penalty`/`frequency_penalty` (the AI SDK maps them), and the tool
 * fields. Optional fields also accept `null` because some clients serialise unset options that way.
 *
 * Tools: `tools`, `tool_choice` and `parallel_tool_calls` are validated in Mistral's shape so that
 * requests routed to an upstream Mistral-compatible API keep working. The local models do not call
 * tools: they ignore `tools` under `tool_choice` auto/none, and a request that *requires* a tool call
 * (`requiresToolCall`) is answered 400 by the tier that serves a local model.
 *
 * Responses are parsed loosely (`z.looseObject`) so that fields we do not know, such as `usage`
 * variants, survive re-serialisation (Portkey #1259).
 */
import * as z from 'zod';

// ─── Models ──────────────────────────────────────────────────────────────────

export const LOCAL_MODEL_IDS = ['mistral-tiny', 'mistral-small'] as const;
export type LocalModelId = (typeof LOCAL_MODEL_IDS)[number];

export interface LocalModelInfo {
  id: LocalModelId;
  aliases: string[];
  /** What runs behind the name. */
  architecture: 'dense' | 'moe';
  description: string;
  maxContextLength: number;
}

export const LOCAL_MODELS: Record<LocalModelId, LocalModelInfo> = {
  'mistral-tiny': {
    id: 'mistral-tiny',
    aliases: ['open-mistral-7b', 'mistral-tiny-2312'],
    architecture: 'dense',
    description: 'Mistral 7B',
    maxContextLength: 32768,
  },
  'mistral-small': {
    id: 'mistral-small',
    aliases: ['open-mixtral-8x7b', 'mistral-small-2312'],
    architecture: 'moe',
    description: 'Mixtral 8x7B (sparse mixture of experts)',
    maxContextLength: 32768,
  },
};

/**
 * Canonical id for a public model name, or null when no local model answers to it. No silent
 * aliases: `mistral-small-latest` (a different model today) and `mistral-medium*` give null.
 */
export function resolveModelId(name: string): LocalModelId | null {
  for (const model of Object.values(LOCAL_MODELS)) {
    if (model.id === name || model.aliases.includes(name)) return model.id;
  }
  return null;
}

// ─── Chat request ────────────────────────────────────────────────────────────

/** Mistral's defaults when a field is absent or null. */
export const CHAT_DEFAULTS = { temperature: 0.7, top_p: 1 } as const;

export const TextChunkSchema = z.strictObject({ type: z.literal('text'), text: z.string() });
export type TextChunk = z.infer<typeof TextChunkSchema>;

/** A message body: a string or an array of text chunks. */
export const MessageContentSchema = z.union([z.string(), z.array(TextChunkSchema)], {
  error: 'Input should be a string or a list of {"type": "text", "text": …} chunks',
});
export type MessageContent = z.infer<typeof MessageContentSchema>;

export const ToolCallSchema = z.strictObject({
  id: z.string().nullish(),
  type: z.literal('function').nullish(),
  function: z.strictObject({ name: z.string(), arguments: z.union([z.string(), z.record(z.string(), z.unknown())]) }),
  index: z.number().int().nullish(),
});

export const SystemMessageSchema = z.strictObject({ role: z.literal('system'), content: MessageContentSchema });
export const UserMessageSchema = z.strictObject({ role: z.literal('user'), content: MessageContentSchema });
export const AssistantMessageSchema = z.strictObject({
  role: z.literal('assistant'),
  content: MessageContentSchema.nullish(),
  tool_calls: z.array(ToolCallSchema).nullish(),
  /** Mistral's prefix mode: the model continues this message. */
  prefix: z.boolean().nullish(),
});
export const ToolMessageSchema = z.strictObject({
  role: z.literal('tool'),
  content: MessageContentSchema,
  tool_call_id: z.string().nullish(),
  name: z.string().nullish(),
});

export const ChatMessageSchema = z.discriminatedUnion('role', [
  SystemMessageSchema,
  UserMessageSchema,
  AssistantMessageSchema,
  ToolMessageSchema,
]);
export type ChatMessage = z.infer<typeof ChatMessageSchema>;

export const ToolSchema = z.strictObject({
  type: z.literal('function'),
  function: z.strictObject({
    name: z.string().min(1),
    description: z.string().nullish(),
    parameters: z.record(z.string(), z.unknown()),
    strict: z.boolean().nullish(),
  }),
});

export const ToolChoiceSchema = z.union(
  [
    z.enum(['auto', 'none', 'any', 'required']),
    z.strictObject({ type: z.literal('function'), function: z.strictObject({ name: z.string() }) }),
  ],
  { error: 'Input should be "auto", "none", "any", "required" or {"type": "function", "function": {"name": …}}' },
);

export const ResponseFormatSchema = z.discriminatedUnion('type', [
  z.strictObject({ type: z.literal('text') }),
  z.strictObject({ type: z.literal('json_object') }),
  z.strictObject({
    type: z.literal('json_schema'),
    json_schema: z.strictObject({
      name: z.string(),
      schema: z.record(z.string(), z.unknown()),
      description: z.string().nullish(),
      strict: z.boolean().nullish(),
    }),
  }),
]);

export const ChatCompletionRequestSchema = z.strictObject({
  model: z.string().min(1),
  messages: z.array(ChatMessageSchema).min(1),
  temperature: z.number().min(0).max(1.5).nullish(),
  top_p: z.number().min(0).max(1).nullish(),
  max_tokens: z.number().int().min(1).nullish(),
  stream: z.boolean().nullish(),
  stop: z.union([z.string(), z.array(z.string())], { error: 'Input should be a string or a list of strings' }).nullish(),
  random_seed: z.number().int().min(0).nullish(),
  safe_prompt: z.boolean().nullish(),
  response_format: ResponseFormatSchema.nullish(),
  presence_penalty: z.number().min(-2).max(2).nullish(),
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  tools: z.array(ToolSchema).nullish(),
  tool_choice: ToolChoiceSchema.nullish(),
  parallel_tool_calls: z.boolean().nullish(),
  /** openai-style; usage is always sent in the last chunk anyway. */
  stream_options: z.strictObject({ include_usage: z.boolean().nullish() }).nullish(),
  /** openai-style end-user id; accepted, not used. */
  user: z.string().nullish(),
});
export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequestSchema>;

/** True when the request demands a tool call, which the local models cannot make. */
export function requiresToolCall(request: ChatCompletionRequest): boolean {
  const choice = request.tool_choice;
  if (!request.tools?.length || choice == null) return false;
  return typeof choice === 'object' || choice === 'any' || choice === 'required';
}

/** The text of a message body, chunks concatenated. */
export function messageText(content: MessageContent | null | undefined): string {
  if (content == null) return '';
  return typeof content === 'string' ? content : content.map((chunk) => chunk.text).join('');
}

/** Sampling is reproducible: greedy, or seeded. The response cache keys on this. */
export function isDeterministic(request: ChatCompletionRequest): boolean {
  return (request.temperature ?? CHAT_DEFAULTS.temperature) === 0 || request.random_seed != null;
}

// ─── Responses ───────────────────────────────────────────────────────────────

/** Emitted finish reasons; Mistral's API also knows model_length, error and tool_calls. */
export const FinishReasonSchema = z.enum(['stop', 'length', 'model_length', 'error', 'tool_calls']);
export type FinishReason = z.infer<typeof FinishReasonSchema>;

export const UsageSchema = z.looseObject({
  prompt_tokens: z.number().int().nonnegative(),
  completion_tokens: z.number().int().nonnegative(),
  total_tokens: z.number().int().nonnegative(),
});
export type Usage = z.infer<typeof UsageSchema>;

export const ChatCompletionResponseSchema = z.looseObject({
  id: z.string(),
  object: z.literal('chat.completion'),
  created: z.number().int(),
  model: z.string(),
  choices: z.array(
    z.looseObject({
      index: z.number().int(),
      message: z.looseObject({
        role: z.literal('assistant'),
        content: z.string().nullable(),
        tool_calls: z.array(z.unknown()).nullish(),
      }),
      finish_reason: FinishReasonSchema.nullable(),
    }),
  ),
  usage: UsageSchema,
});
export type ChatCompletionResponse = z.infer<typeof ChatCompletionResponseSchema>;

export const ChatCompletionChunkSchema = z.looseObject({
  id: z.string(),
  object: z.literal('chat.completion.chunk'),
  created: z.number().int(),
  model: z.string(),
  choices: z.array(
    z.looseObject({
      index: z.number().int(),
      delta: z.looseObject({
        role: z.literal('assistant').nullish(),
        content: z.string().nullish(),
        tool_calls: z.array(z.unknown()).nullish(),
      }),
      finish_reason: FinishReasonSchema.nullable(),
    }),
  ),
  /** Present on the last chunk only. */
  usage: UsageSchema.nullish(),
});
export type ChatCompletionChunk = z.infer<typeof ChatCompletionChunkSchema>;

// ─── Models list ─────────────────────────────────────────────────────────────

export const ModelCardSchema = z.looseObject({
  id: z.string(),
  object: z.literal('model'),
  created: z.number().int(),
  owned_by: z.string(),
  root: z.string().nullable(),
  parent: z.string().nullable(),
  permission: z.array(z.unknown()),
  capabilities: z.looseObject({
    completion_chat: z.boolean(),
    completion_fim: z.boolean(),
    function_calling: z.boolean(),
    fine_tuning: z.boolean(),
    vision: z.boolean(),
  }),
  max_context_length: z.number().int(),
  aliases: z.array(z.string()),
  description: z.string().nullish(),
  type: z.literal('base').nullish(),
});
export type ModelCard = z.infer<typeof ModelCardSchema>;

export const ModelListSchema = z.object({ object: z.literal('list'), data: z.array(ModelCardSchema) });
export type ModelList = z.infer<typeof ModelListSchema>;

/** The card `GET /v1/models` returns for a model: the 2023 fields plus capabilities, context and aliases. */
export function modelCard(
  id: string,
  {
    created,
    aliases = [],
    maxContextLength = 32768,
    description = null,
    functionCalling = false,
    ownedBy = 'mistralai',
  }: {
    created: number;
    aliases?: string[];
    maxContextLength?: number;
    description?: string | null;
    functionCalling?: boolean;
    ownedBy?: string;
  },
): ModelCard {
  return {
    id,
    object: 'model',
    created,
    owned_by: ownedBy,
    root: null,
    parent: null,
    permission: [],
    capabilities: { completion_chat: true, completion_fim: false, function_calling: functionCalling, fine_tuning: false, vision: false },
    max_context_length: maxContextLength,
    aliases,
    description,
    type: 'base',
  };
}

/** Cards for the local models. */
export function localModelCards(created: number): ModelCard[] {
  return Object.values(LOCAL_MODELS).map((model) =>
    modelCard(model.id, { created, aliases: model.aliases, maxContextLength: model.maxContextLength, description: model.description }),
  );
}
