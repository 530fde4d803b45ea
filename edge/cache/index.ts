/**
 * Response cache for POST /v1/chat/completions: deterministic answers (temperature 0, or a
 * random_seed) are stored per tenant and served again without touching a sidecar.
 *
 * Wiring (edge/app.ts): after validation and rate limiting, before the handler that calls a sidecar:
 *     app.post('/v1/chat/completions', validateChatRequest(), resolveChatRoute(), rateLimit(…),
 *       responseCache({ tenant: (c) => c.get('apiKey')?.tenant, request: (c) => c.get('chatRequest') }),
 *       chatCompletions(deps, recordUsage));
 * Bindings it reads from `c.env`: `CACHE_TTL_SECONDS` (var, default 600; "0" turns the cache off) and
 * `RESPONSE_CACHE` (optional KV namespace: entries then also go to KV, read behind the data centre's
 * Cache API; without it only the Cache API is used). A cache hit
 * does not reach the handler, so no tokens are charged for it (it still counts as a request; `onHit` lets the
 * usage ledger record it).
 *
 * Behaviour:
 * - Key: SHA-256 of tenant + normalised request (./cache-key.ts); streamed and non-streamed requests
 *   share entries, and a cached answer is replayed as SSE to a streaming client (./sse-replay.ts).
 * - Stored: only 200 answers that finished cleanly (finish_reason stop/length/tool_calls, usage present;
 *   for streams `[DONE]` after a clean last chunk). Never errors, error frames or cut/aborted streams.
 * - `x-cache: HIT | MISS | BYPASS` on every response; BYPASS when the request is not deterministic,
 *   has no tenant, the cache is off, or the client sent `x-sirocco-cache: bypass` (skip lookup and
 *   store for this request, e.g. to force a fresh answer).
 * - A failing cache never fails the request: lookup/store errors are logged and count as a miss, and a
 *   request whose key cannot be computed is logged and bypasses the cache.
 */
import type { Context, Env, MiddlewareHandler } from 'hono';
import {
  type ChatCompletionRequest,
  ChatCompletionRequestSchema,
  type ChatCompletionResponse,
  ChatCompletionResponseSchema,
  isDeterministic,
} from '../../shared/api.ts';
import { createSseParser } from '../../shared/sse.ts';
import { cacheKey } from './cache-key.ts';
import { createCompletionAssembler } from './completion-assembler.ts';
import { type CompletionStore, cacheApiStore, kvStore, tieredStore } from './completion-store.ts';
import { replayAsSse } from './sse-replay.ts';

export { cacheKey, normaliseRequest } from './cache-key.ts';
export { type CompletionStore, cacheApiStore, kvStore, tieredStore } from './completion-store.ts';
export { completionToChunks, replayAsSse } from './sse-replay.ts';

export const CACHE_STATUS_HEADER = 'x-cache';
/** Request header: `x-sirocco-cache: bypass` skips the cache for one request. */
export const CACHE_CONTROL_REQUEST_HEADER = 'x-sirocco-cache';
export const DEFAULT_CACHE_TTL_SECONDS = 600;

export type CacheStatus = 'HIT' | 'MISS' | 'BYPASS';

/** The bindings the cache reads when no explicit option overrides them. */
export type ResponseCacheBindings = {
  CACHE_TTL_SECONDS?: string;
  RESPONSE_CACHE?: KVNamespace;
};

export type ResponseCacheOptions<E extends Env> = {
  /** The caller's tenant; entries are never shared across tenants. `undefined` bypasses the cache. */
  tenant: (c: Context<E>) => string | undefined;
  /** The validated request; defaults to reading and validating the JSON body (invalid ⇒ BYPASS). */
  request?: (c: Context<E>) => ChatCompletionRequest | undefined | Promise<ChatCompletionRequest | undefined>;
  /** Entry lifetime; defaults to `CACHE_TTL_SECONDS` (0 turns caching off). */
  ttlSeconds?: (c: Context<E>) => number;
  /** Where entries live; defaults to the Cache API, in front of KV `RESPONSE_CACHE` when that is bound. */
  store?: (c: Context<E>) => CompletionStore;
  /** Called with the answer a hit serves (the usage ledger records it as a cached request). */
  onHit?: (c: Context<E>, completion: ChatCompletionResponse) => void;
};

type CacheEnv = Env & { Bindings: ResponseCacheBindings };

/** Parses CACHE_TTL_SECONDS; a bad value is a deployment error, named as such. */
export function parseTtlSeconds(value: string | undefined): number {
  if (value === undefined || value.trim() === '') return DEFAULT_CACHE_TTL_SECONDS;
  const seconds = Number(value);
  if (!Number.isSafeInteger(seconds) || seconds < 0) {
    throw new RangeError(`CACHE_TTL_SECONDS must be a whole number of seconds ≥ 0, got "${value}"`);
  }
  return seconds;
}

function logCacheFailure(operation: string, error: unknown): void {
  console.error(JSON.stringify({ event: 'response_cache_error', operation, message: String(error) }));
}

/** Runs work after the response is sent when an execution context exists (it does in Workers). */
function inBackground<E extends Env>(c: Context<E>, work: Promise<unknown>): void {
  const guarded = work.catch((error: unknown) => logCacheFailure('store', error));
  try {
    c.executionCtx.waitUntil(guarded);
  } catch {
    // No execution context (e.g. `app.request` in a unit test): the promise still runs.
  }
}

async function readRequestBody<E extends Env>(c: Context<E>): Promise<ChatCompletionRequest | undefined> {
  try {
    const parsed = ChatCompletionRequestSchema.safeParse(await c.req.json());
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined; // not JSON: the validator answers it
  }
}

/** The request's cache key; a request whose key cannot be computed bypasses the cache rather than failing. */
async function keyOrNothing(tenant: string, request: ChatCompletionRequest): Promise<string | undefined> {
  try {
    return await cacheKey(tenant, request);
  } catch (error) {
    logCacheFailure('key', error);
    return undefined;
  }
}

/** Worth storing: a complete answer, not an error or a truncated one. */
function isCacheable(completion: ChatCompletionResponse): boolean {
  const reason = completion.choices[0]?.finish_reason;
  return completion.choices.length > 0 && reason !== null && reason !== undefined && reason !== 'error' && reason !== 'model_length';
}

/**
 * Passes a streamed body through unchanged, chunk for chunk, while assembling it; stores it if it
 * ends cleanly. A hand-written pull stream rather than pipeThrough, so that a client's cancel
 * reliably reaches the source (workerd #5058) and an upstream failure never counts as an end.
 */
function assembleWhileStreaming(
  body: ReadableStream<Uint8Array>,
  onComplete: (completion: ChatCompletionResponse) => void,
): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  const parser = createSseParser();
  const decoder = new TextDecoder();
  const assembler = createCompletionAssembler();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { done, value } = await reader.read(); // a failed upstream rejects here: nothing is stored
      if (!done) {
        controller.enqueue(value);
        for (const event of parser.push(decoder.decode(value, { stream: true }))) assembler.push(event);
        return;
      }
      controller.close();
      for (const event of [...parser.push(decoder.decode()), ...parser.end()]) assembler.push(event);
      const completion = assembler.completion();
      if (completion && isCacheable(completion)) onComplete(completion);
    },
    cancel(reason) {
      return reader.cancel(reason); // the client left: stop the upstream too, and store nothing
    },
  });
}

/**
 * Serves deterministic chat requests from the cache and stores fresh answers.
 *
 * @example
 * app.post('/v1/chat/completions', responseCache({ tenant: (c) => c.get('apiKey')?.tenant }), chatHandler);
 */
export function responseCache<E extends CacheEnv>(options: ResponseCacheOptions<E>): MiddlewareHandler<E> {
  if (typeof options.tenant !== 'function') throw new TypeError('responseCache() needs a `tenant` function');
  const ttlOf = options.ttlSeconds ?? ((c: Context<E>) => parseTtlSeconds(c.env?.CACHE_TTL_SECONDS));
  const storeOf =
    options.store ??
    ((c: Context<E>) => {
      const local = cacheApiStore(caches.default);
      return c.env?.RESPONSE_CACHE ? tieredStore(local, kvStore(c.env.RESPONSE_CACHE)) : local;
    });
  const requestOf = options.request ?? readRequestBody;

  return async (c, next) => {
    const ttlSeconds = ttlOf(c);
    const tenant = options.tenant(c);
    const request = await requestOf(c);
    const bypass = c.req.header(CACHE_CONTROL_REQUEST_HEADER)?.trim().toLowerCase() === 'bypass';
    const cacheable = !bypass && ttlSeconds > 0 && tenant && request && isDeterministic(request) ? request : undefined;
    const key = tenant && cacheable ? await keyOrNothing(tenant, cacheable) : undefined;
    if (!cacheable || key === undefined) {
      await next();
      c.header(CACHE_STATUS_HEADER, 'BYPASS' satisfies CacheStatus);
      return;
    }

    const store = storeOf(c);
    const cached = await store.get(key).catch((error: unknown) => logCacheFailure('lookup', error));
    if (cached) {
      options.onHit?.(c, cached);
      const hitHeaders = { [CACHE_STATUS_HEADER]: 'HIT' satisfies CacheStatus };
      return cacheable.stream ? replayAsSse(cached, hitHeaders) : c.json(cached, 200, hitHeaders);
    }

    await next();
    const response = c.res;
    const save = (completion: ChatCompletionResponse) => inBackground(c, store.put(key, completion, ttlSeconds));
    const contentType = response.headers.get('content-type') ?? '';
    if (response.status === 200 && response.body) {
      if (contentType.startsWith('text/event-stream')) {
        c.res = new Response(assembleWhileStreaming(response.body, save), response);
      } else if (contentType.startsWith('application/json')) {
        const copy = response.clone();
        inBackground(
          c,
          copy.json().then((body: unknown) => {
            const parsed = ChatCompletionResponseSchema.safeParse(body);
            if (parsed.success && isCacheable(parsed.data)) save(parsed.data);
          }),
        );
      }
    }
    c.header(CACHE_STATUS_HEADER, 'MISS' satisfies CacheStatus);
  };
}
