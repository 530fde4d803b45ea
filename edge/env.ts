/**
 * The edge worker's bindings (wrangler.toml + secrets) and the per-request variables its middleware
 * share through Hono's context.
 */

import type { UsageEvent } from '../shared/usage.ts';
import type { Logger } from './logging/logger.ts';
import type { RateLimiter } from './rate-limit/rate-limiter.ts';
import type { SpendLimiter } from './usage/spend-limiter.ts';

export interface EdgeBindings {
  /** API key records by peppered hash (edge/auth). */
  API_KEYS: KVNamespace;
  /** Exact per-key budgets, one Durable Object per key (edge/rate-limit). */
  RATE_LIMITER: DurableObjectNamespace<RateLimiter>;
  /** Month-to-date spend and tokens, one Durable Object per key and one per tenant (edge/usage). */
  SPEND_LIMITER: DurableObjectNamespace<SpendLimiter>;
  /** The usage ledger's queue (edge/usage): one event per finished chat request. Unbound: usage is not recorded. */
  USAGE_QUEUE?: Queue<UsageEvent>;
  /** The usage ledger (D1, schema in migrations/), written by the queue consumer. */
  USAGE_DB?: D1Database;
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
  /** JSON price table (edge/config), and how many days raw usage events are kept. */
  PRICES?: string;
  USAGE_RETENTION_DAYS?: string;
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
  /** Monthly caps (UTC months): spend in micro-units of the price table's currency, and tokens; absent or null = none. */
  spendCapMonthMicros?: number | null;
  tokenCapMonth?: number | null;
  /** Unix milliseconds. */
  createdAt: number;
}

export interface EdgeVariables {
  requestId: string;
  logger: Logger;
  apiKey: ApiKeyRecord | undefined;
}

export type AppEnv = { Bindings: EdgeBindings; Variables: EdgeVariables };
