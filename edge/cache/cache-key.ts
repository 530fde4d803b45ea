/**
 * The response-cache key: SHA-256 of the tenant plus the normalised request.
 *
 * Normalising makes requests that must produce the same answer share an entry: the model alias is
 * resolved to its canonical id, defaults are filled in (temperature 0.7, top_p 1, safe_prompt false),
 * null equals absent, a `stop` string equals a one-element list, text-chunk content equals the joined
 * string, and object keys are sorted. Transport-only fields (`stream`, `stream_options`, `user`) are
 * left out, so a streamed and a non-streamed request share an entry. Every other field is kept: it
 * could change the answer (this covers model, messages, temperature, top_p, max_tokens, random_seed,
 * safe_prompt, stop, response_format, tools, tool_choice and the penalties).
 */
import { CHAT_DEFAULTS, type ChatCompletionRequest, type ChatMessage, messageText, resolveModelId } from '../../shared/api.ts';
import { sha256Hex } from '../../shared/crypto.ts';

/** Fields that change how the answer is delivered, not what it is. */
const TRANSPORT_FIELDS = new Set(['stream', 'stream_options', 'user']);

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

function normaliseMessage(message: ChatMessage): Json {
  return { ...stripNullish(message), content: messageText(message.content) };
}

/** Drops null and undefined values: Mistral treats them as absent. */
function stripNullish(value: object): { [key: string]: Json } {
  return Object.fromEntries(Object.entries(value).filter(([, field]) => field != null)) as { [key: string]: Json };
}

/** The request as the cache sees it (before hashing); exported for tests and debugging. */
export function normaliseRequest(request: ChatCompletionRequest): { [key: string]: Json } {
  const fields = stripNullish(request);
  for (const name of TRANSPORT_FIELDS) delete fields[name];
  const stop = request.stop == null ? [] : typeof request.stop === 'string' ? [request.stop] : request.stop;
  if (stop.length > 0) fields.stop = stop;
  else delete fields.stop;
  return {
    ...fields,
    model: resolveModelId(request.model) ?? request.model,
    messages: request.messages.map(normaliseMessage),
    temperature: request.temperature ?? CHAT_DEFAULTS.temperature,
    top_p: request.top_p ?? CHAT_DEFAULTS.top_p,
    safe_prompt: request.safe_prompt ?? false,
  };
}

/** JSON with object keys sorted at every depth, so equal values serialise identically. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, field: unknown) =>
    field !== null && typeof field === 'object' && !Array.isArray(field)
      ? Object.fromEntries(Object.entries(field).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : field,
  );
}

/** Hex SHA-256 identifying this tenant's answer to this request. */
export function cacheKey(tenant: string, request: ChatCompletionRequest): Promise<string> {
  return sha256Hex(canonicalJson({ tenant, request: normaliseRequest(request) }));
}
