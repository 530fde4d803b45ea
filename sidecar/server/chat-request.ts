/**
 * From request bytes to a scheduler request: strict UTF-8, JSON, the shared Mistral schema (422
 * with `detail[]` on failure), model resolution, then the chat template and sampling settings.
 */
import { CHAT_DEFAULTS, type ChatCompletionRequest, ChatCompletionRequestSchema, messageText, requiresToolCall } from '../../shared/api.ts';
import { invalidRequest } from '../errors.ts';
import type { GenerationRequest } from '../serving/decoder.ts';
import { type ChatMessage, type ChatPromptRenderer, renderChatPrompt } from '../text/chat-template.ts';
import type { Tokenizer } from '../text/tokenizer.ts';
import { RequestValidationError } from './error-response.ts';

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

export function parseChatRequest(bytes: ArrayBuffer): ChatCompletionRequest {
  let text: string;
  try {
    text = strictUtf8.decode(bytes);
  } catch {
    throw invalidRequest('the request body is not valid UTF-8');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw invalidRequest(`the request body is not valid JSON: ${error instanceof Error ? error.message : String(error)}`);
  }
  // reportInput lets the 422 tell a wrong type from a missing field.
  const parsed = ChatCompletionRequestSchema.safeParse(json, { reportInput: true });
  if (!parsed.success) throw new RequestValidationError(parsed.error);
  return parsed.data;
}

function templateMessages(request: ChatCompletionRequest): ChatMessage[] {
  return request.messages.map((message, index) => {
    if (message.role === 'tool') {
      throw invalidRequest('tool messages are not supported by the local models', `messages.${index}.role`);
    }
    return { role: message.role, content: messageText(message.content) };
  });
}

export interface GenerationRequestOptions {
  signal?: AbortSignal;
  /** The model's `max_tokens` for a request that leaves it unset (the demo models' cap); undefined = the rest of the context. */
  defaultMaxTokens?: number;
  /** The model's context length, so the default never asks for more than the prompt leaves. */
  contextLength?: number;
  /** The model's chat template (default: Mistral's v1). */
  renderPrompt?: ChatPromptRenderer;
}

/** The scheduler request for a validated chat request on a model with `tokenizer`. */
export function toGenerationRequest(
  request: ChatCompletionRequest,
  tokenizer: Tokenizer,
  { signal, defaultMaxTokens, contextLength = Infinity, renderPrompt = renderChatPrompt }: GenerationRequestOptions = {},
): GenerationRequest {
  if (requiresToolCall(request)) throw invalidRequest('the local models cannot make tool calls', 'tool_choice');
  const promptIds = renderPrompt(tokenizer, templateMessages(request), { safePrompt: request.safe_prompt ?? false });
  const stop = request.stop == null ? [] : typeof request.stop === 'string' ? [request.stop] : request.stop;
  // When the context has less room than the default, unset keeps its meaning (the rest of the
  // context), so the decoder's own rules and messages apply.
  const cappedDefault =
    defaultMaxTokens !== undefined && contextLength - promptIds.length > defaultMaxTokens ? defaultMaxTokens : undefined;
  return {
    promptIds,
    maxTokens: request.max_tokens ?? cappedDefault,
    temperature: request.temperature ?? CHAT_DEFAULTS.temperature,
    topP: request.top_p ?? CHAT_DEFAULTS.top_p,
    seed: request.random_seed ?? undefined,
    stop: stop.filter((text) => text !== ''),
    jsonMode: request.response_format != null && request.response_format.type !== 'text',
    jsonSchema: request.response_format?.type === 'json_schema' ? request.response_format.json_schema.schema : undefined,
    signal,
  };
}
