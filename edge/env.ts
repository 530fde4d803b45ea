/**
 * The edge worker's bindings (wrangler.toml + secrets) and the per-request variables its middleware
 * share through Hono's context.
 */
import type { Logger } from './logging/logger.ts';
import type { RateLimiter } from './rate-limit/rate-limiter.ts';

export interface EdgeBindings {
  /** API key records by peppered hash (edge/auth). */
  API_KEYS: KVNamespace;
  /** Exact per-key budgets, one Durable Object per key (edge/rate-limit). */
  RATE_LIMITER: DurableObjectNamespace<RateLimiter>;
  /** Optional KV store for the response cache (edge/cache). */
  RESPONSE_CACHE?: KVNamespace;
  /** The static chat page (edge/public). */
  ASSETS?: Fetcher;
  /** JSON sidecar registry, see edge/config. */
  SIDECARS?: string;
  /** JSON map model → Mistral-compatible upstream API. */
  UPSTREAMS?: string;
  /** Comma-separated allowed browser origins, or "*". */
  CORS_ORIGINS?: string;
  /** Tunables (strings, as wrangler vars are): see edge/config. */
  FIRST_BYTE_TIMEOUT_MS?: string;
  COMPLETION_TIMEOUT_MS?: string;
  KEEP_ALIVE_MS?: string;
  STREAM_IDLE_TIMEOUT_MS?: string;
  HEALTH_TTL_MS?: string;
  CIRCUIT_FAILURE_THRESHOLD?: string;
  CIRCUIT_COOLDOWN_MS?: string;
  CACHE_TTL_SECONDS?: string;
  /** Secrets. */
  SIROCCO_SIDECAR_SECRET?: string;
  SIROCCO_ADMIN_SECRET?: string;
  /** HMAC key API keys are hashed with (edge/auth); unset = the admin secret. */
  SIROCCO_KEY_PEPPER?: string;
}

/** An authenticated caller, as edge/auth stores it (never the key itself). */
export interface ApiKeyRecord {
  /** Public id: the first 16 hex digits of the hash the key was created under; used to revoke. */
  id: string;
  /** HMAC-SHA-256(pepper, key), lower-case hex (bare SHA-256 only for records not yet migrated). */
  hash: string;
  tenant: string;
  /** Model names or canonical ids this key may use; ["*"] for all. */
  models: string[];
  limits: { requestsPerMinute: number; tokensPerMinute: number };
  /** Unix milliseconds. */
  createdAt: number;
}

export interface EdgeVariables {
  requestId: string;
  logger: Logger;
  apiKey: ApiKeyRecord | undefined;
}

export type AppEnv = { Bindings: EdgeBindings; Variables: EdgeVariables };
