/**
 * Where cached completions live: the Workers Cache API (default; per data centre, free, evicted
 * under pressure) or a KV namespace when one is configured (global, eventually consistent, which is
 * fine for immutable answers). Both store the assembled non-stream completion as JSON.
 */
import { ChatCompletionResponseSchema, type ChatCompletionResponse } from '../../shared/api.ts';

export interface CompletionStore {
  get(key: string): Promise<ChatCompletionResponse | undefined>;
  put(key: string, completion: ChatCompletionResponse, ttlSeconds: number): Promise<void>;
}

/** The Cache API only accepts GET requests as keys, so each entry gets a synthetic GET URL. */
const SYNTHETIC_ORIGIN = 'https://response-cache.sirocco.internal/v1/chat/completions/';

/** KV rejects expirations shorter than 60 s. */
const KV_MIN_TTL_SECONDS = 60;

/** A stored entry that no longer parses (older format, corruption) counts as a miss. */
function parseEntry(text: string | null): ChatCompletionResponse | undefined {
  if (text === null) return undefined;
  try {
    const parsed = ChatCompletionResponseSchema.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

export function cacheApiStore(cache: Cache): CompletionStore {
  return {
    async get(key) {
      const hit = await cache.match(SYNTHETIC_ORIGIN + key);
      return hit ? parseEntry(await hit.text()) : undefined;
    },
    async put(key, completion, ttlSeconds) {
      const entry = new Response(JSON.stringify(completion), {
        headers: { 'content-type': 'application/json', 'cache-control': `max-age=${ttlSeconds}` },
      });
      await cache.put(SYNTHETIC_ORIGIN + key, entry);
    },
  };
}

export function kvStore(namespace: KVNamespace): CompletionStore {
  return {
    async get(key) {
      return parseEntry(await namespace.get(`chat:${key}`, 'text'));
    },
    async put(key, completion, ttlSeconds) {
      await namespace.put(`chat:${key}`, JSON.stringify(completion), {
        expirationTtl: Math.max(KV_MIN_TTL_SECONDS, ttlSeconds),
      });
    },
  };
}
