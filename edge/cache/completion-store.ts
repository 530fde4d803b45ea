/**
 * Where cached completions live: the Workers Cache API (default; per data centre, free, evicted
 * under pressure) or, when a KV namespace is configured, KV behind the Cache API (`tieredStore`):
 * KV makes an answer global (eventually consistent, fine for immutable answers) while repeated hits
 * in one data centre are served by the faster local cache. All store the assembled non-stream
 * completion as JSON.
 */
import { type ChatCompletionResponse, ChatCompletionResponseSchema } from '../../shared/api.ts';

export interface CompletionStore {
  get(key: string): Promise<ChatCompletionResponse | undefined>;
  put(key: string, completion: ChatCompletionResponse, ttlSeconds: number): Promise<void>;
}

/** The Cache API only accepts GET requests as keys, so each entry gets a synthetic GET URL. */
const SYNTHETIC_ORIGIN = 'https://response-cache.sirocco.internal/v1/chat/completions/';

/** KV rejects expirations shorter than 60 s. */
const KV_MIN_TTL_SECONDS = 60;

/** Lifetime of a local copy of a KV entry (see tieredStore). */
const BACKFILL_TTL_SECONDS = 60;

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

/**
 * The local cache in front of a global one: reads try `near` first and copy a `far` hit into it;
 * writes go to both. `near` failures never hide a `far` hit.
 */
export function tieredStore(near: CompletionStore, far: CompletionStore): CompletionStore {
  return {
    async get(key) {
      const local = await near.get(key).catch(() => undefined);
      if (local) return local;
      const global = await far.get(key);
      // The remaining KV lifetime is unknown here: a short local copy overstays it by at most 60 s,
      // no worse than KV's own propagation delay. Paid once per data centre, on its first hit.
      if (global) await near.put(key, global, BACKFILL_TTL_SECONDS).catch(() => undefined);
      return global;
    },
    async put(key, completion, ttlSeconds) {
      await Promise.all([near.put(key, completion, ttlSeconds), far.put(key, completion, ttlSeconds)]);
    },
  };
}
