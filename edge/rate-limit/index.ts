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
 *   With `reserveTokens` (edge/app.ts passes the chat request's worst case, ./token-reservation.ts)
 *   a request is admitted only if those tokens fit beside the ones already spent and the reservations
 *   of the key's running requests; the reservation is `c.get('tokenReservation')`.
 * - When a response ends (non-stream: after reading usage; stream: when the last chunk's usage has
 *   passed), settle the reservation to the real usage without delaying the client:
 *     c.executionCtx.waitUntil(c.get('tokenReservation').settle(usage.total_tokens));
 *   (without a reservation: chargeTokens(c.env.RATE_LIMITER, { keyHash, limits }, usage.total_tokens)).
 *   A reservation not settled by then is released once the response body has ended (fully sent, the
 *   client gone, or an error) or at once for an error status or a thrown error; a settlement arriving
 *   after the release is an ordinary debit, so usage is always charged.
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
import type { AdmitResult, RateLimiter } from './rate-limiter.ts';
import { assertValidLimits, type RateLimitStatus, type RateLimits } from './sliding-window.ts';

export { RateLimiter, SAVE_INTERVAL_MS } from './rate-limiter.ts';
export { type RateLimitDecision, type RateLimitStatus, type RateLimits, WINDOW_MS } from './sliding-window.ts';
export { tokensToReserve } from './token-reservation.ts';

declare module 'hono' {
  interface ContextVariableMap {
    tokenReservation: TokenReservation | undefined;
  }
}

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
  /**
   * Tokens the request reserves at admission (its worst case; `upToRemaining`: whatever is left, at
   * most that many). Omitted or 0: none, tokens are only charged afterwards.
   */
  reserveTokens?: (c: Context<E>, limits: RateLimits) => { tokens: number; upToRemaining?: boolean };
};

/**
 * One admitted request's reserved tokens. Exactly one of `settle` and `release` takes effect; a
 * `settle` after a `release` still charges the usage (as a plain debit).
 */
export class TokenReservation {
  #held = true;

  constructor(
    private readonly limiter: DurableObjectStub<RateLimiter>,
    readonly id: string,
    private readonly limits: RateLimits,
  ) {}

  /** Replaces the reservation by the tokens the request used. */
  async settle(tokens: number): Promise<RateLimitStatus> {
    const held = this.#held;
    this.#held = false;
    return held ? this.limiter.settle(this.id, tokens, this.limits) : this.limiter.debit(tokens, this.limits);
  }

  /** Gives the reserved tokens back; a no-op once settled or released. */
  async release(): Promise<void> {
    if (!this.#held) return;
    this.#held = false;
    await this.limiter.release(this.id);
  }
}

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

    const limiter = limiterFor(options.namespace(c), subject.keyHash);
    const reservation = options.reserveTokens?.(c, subject.limits) ?? { tokens: 0 };
    let decision: AdmitResult;
    try {
      decision = await limiter.admit(subject.limits, reservation);
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
    const held = decision.reservationId ? new TokenReservation(limiter, decision.reservationId, subject.limits) : undefined;
    c.set('tokenReservation', held);
    try {
      await next();
    } catch (error) {
      if (held) releaseInBackground(c, held);
      throw error;
    }
    if (held) releaseWhenDone(c, held);
    for (const [name, value] of Object.entries(headers)) c.header(name, value);
  };
}

/** A hold on a budget that a finished request gives back unless it was settled (token or spend reservations). */
export type Releasable = { release(): Promise<void> };

export function releaseInBackground<E extends Env>(c: Context<E>, reservation: Releasable): void {
  // After the handler's own background work was queued, so a settlement in flight goes first.
  const work = new Promise((resolve) => setTimeout(resolve, 0))
    .then(() => reservation.release())
    .catch((error: unknown) => console.error(JSON.stringify({ event: 'reservation_release_failed', message: String(error) })));
  try {
    c.executionCtx.waitUntil(work);
  } catch {
    // No execution context (app.request in a unit test): the promise still runs.
  }
}

/**
 * Releases the reservation when the response can no longer lead to a settlement: at once for an
 * error status or a body-less answer, else when its body ends (read to the end, cancelled by a
 * departing client, or failed).
 */
export function releaseWhenDone<E extends Env>(c: Context<E>, reservation: Releasable): void {
  const response = c.res;
  if (response.status !== 200 || !response.body) {
    releaseInBackground(c, reservation);
    return;
  }
  const reader = response.body.getReader();
  const ended = () => releaseInBackground(c, reservation);
  // A hand-written pull stream rather than pipeThrough, so that a client's cancel reliably reaches the source.
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (error) {
        ended();
        throw error;
      }
      if (chunk.done) {
        controller.close();
        ended();
      } else {
        controller.enqueue(chunk.value);
      }
    },
    cancel(reason) {
      ended();
      return reader.cancel(reason);
    },
  });
  c.res = new Response(body, response);
}
