/**
 * Exact per-key rate limits: requests/minute and tokens/minute, one `RateLimiter` Durable Object per
 * API key. Window algorithm: see ./sliding-window.ts (sliding 60 s, exact counts, 1 s buckets).
 *
 * Wiring:
 * - `export { RateLimiter } from './rate-limit/index.ts'` from edge/index.ts; bind it in wrangler.toml:
 *     [[durable_objects.bindings]] name = "RATE_LIMITER", class_name = "RateLimiter"
 *     [[migrations]] tag = "v1", new_sqlite_classes = ["RateLimiter"]
 * - After authentication, on /v1/chat/completions:
 *     app.use('/v1/chat/completions', rateLimit<AppEnv>({
 *       namespace: (c) => c.env.RATE_LIMITER,
 *       subject: (c) => { const key = c.get('apiKey'); return key && { keyHash: key.hash, limits: key.limits }; },
 *     }));
 * - When a response ends (non-stream: after reading usage; stream: when the last chunk's usage has
 *   passed), charge the real usage without delaying the client:
 *     c.executionCtx.waitUntil(chargeTokens(c.env.RATE_LIMITER, { keyHash, limits }, usage.total_tokens));
 *
 * Admitted responses carry x-ratelimit-{limit,remaining}-{req,tokens}-minute. Rejected requests throw
 * an EdgeError that the app's `onError` turns into 429
 * `{"object":"error","message":"Rate limit exceeded","type":"rate_limited","param":null,"code":"1300"}`
 * with the x-ratelimit-* headers, `Retry-After` (whole seconds) and `retry-after-ms`, both ≤ 60 s. If
 * the limiter cannot be reached the request is refused with 503 (fail closed: budgets are exact or not
 * enforced at all).
 */
import type { Context, Env, MiddlewareHandler } from 'hono';
import { ERROR_CODES } from '../../shared/errors.ts';
import { EdgeError } from '../errors.ts';
import type { RateLimiter } from './rate-limiter.ts';
import { assertValidLimits, type RateLimitDecision, type RateLimitStatus, type RateLimits } from './sliding-window.ts';

export { RateLimiter, SAVE_INTERVAL_MS } from './rate-limiter.ts';
export { type RateLimitDecision, type RateLimitStatus, type RateLimits, WINDOW_MS } from './sliding-window.ts';

/** Whose budget a request spends: the API key's SHA-256 hash (never the key) and its limits. */
export type RateLimitSubject = {
  keyHash: string;
  limits: RateLimits;
};

export type RateLimitOptions<E extends Env> = {
  /** The namespace bound to the `RateLimiter` class. */
  namespace: (c: Context<E>) => DurableObjectNamespace<RateLimiter>;
  /** The caller's key and limits; `undefined` lets the request through unmetered. */
  subject: (c: Context<E>) => RateLimitSubject | undefined;
};

export const RATE_LIMIT_HEADERS = {
  limitRequests: 'x-ratelimit-limit-req-minute',
  remainingRequests: 'x-ratelimit-remaining-req-minute',
  limitTokens: 'x-ratelimit-limit-tokens-minute',
  remainingTokens: 'x-ratelimit-remaining-tokens-minute',
} as const;

/** Seconds a client is told to wait when the limiter itself is unavailable. */
const UNAVAILABLE_RETRY_SECONDS = 1;

function limiterFor(namespace: DurableObjectNamespace<RateLimiter>, keyHash: string): DurableObjectStub<RateLimiter> {
  return namespace.get(namespace.idFromName(keyHash));
}

/** The x-ratelimit-* headers for a status. */
export function rateLimitHeaders(current: RateLimitStatus): Record<string, string> {
  return {
    [RATE_LIMIT_HEADERS.limitRequests]: String(current.limitRequests),
    [RATE_LIMIT_HEADERS.remainingRequests]: String(current.remainingRequests),
    [RATE_LIMIT_HEADERS.limitTokens]: String(current.limitTokens),
    [RATE_LIMIT_HEADERS.remainingTokens]: String(current.remainingTokens),
  };
}

/**
 * Charges the tokens a finished response used (prompt + completion) to the key's window. Call it in
 * `waitUntil` once usage is known; a failed charge is reported and leaves the window uncharged.
 */
export async function chargeTokens(
  namespace: DurableObjectNamespace<RateLimiter>,
  subject: RateLimitSubject,
  tokens: number,
): Promise<RateLimitStatus> {
  return limiterFor(namespace, subject.keyHash).debit(tokens, subject.limits);
}

/**
 * Admits or rejects each request against the caller's exact per-minute budgets.
 *
 * @example
 * app.use('/v1/chat/completions', rateLimit<AppEnv>({
 *   namespace: (c) => c.env.RATE_LIMITER,
 *   subject: (c) => c.get('rateLimitSubject'),
 * }));
 */
export function rateLimit<E extends Env>(options: RateLimitOptions<E>): MiddlewareHandler<E> {
  if (typeof options.namespace !== 'function' || typeof options.subject !== 'function') {
    throw new TypeError('rateLimit() needs `namespace` and `subject` functions');
  }
  return async (c, next) => {
    const subject = options.subject(c);
    if (!subject) return next();
    assertValidLimits(subject.limits); // a malformed key record is an operator bug: let onError report it

    let decision: RateLimitDecision;
    try {
      decision = await limiterFor(options.namespace(c), subject.keyHash).admit(subject.limits);
    } catch (error) {
      console.error(JSON.stringify({ event: 'rate_limiter_unavailable', message: String(error) }));
      throw new EdgeError('overloaded', 'Rate limiter unavailable, retry shortly', {
        retryAfterSeconds: UNAVAILABLE_RETRY_SECONDS,
        cause: error,
      });
    }

    const headers = rateLimitHeaders(decision);
    if (!decision.allowed) {
      throw new EdgeError('rate_limited', 'Rate limit exceeded', {
        code: ERROR_CODES.rateLimited,
        retryAfterSeconds: decision.retryAfterMs / 1000,
        headers,
      });
    }
    await next();
    for (const [name, value] of Object.entries(headers)) c.header(name, value);
  };
}
