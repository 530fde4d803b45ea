/**
 * Monthly spend and token caps per key and per tenant, enforced at admission through the subjects' SpendLimiter
 * objects (./spend-limiter.ts), after the rate limiter:
 *
 *   app.post('/v1/chat/completions', …, rateLimit(…), spendCaps(), responseCache(…), chatCompletions(…));
 *
 * A capped subject reserves the request's worst case (tokensToReserve's tokens, priced at the model's dearer
 * rate) before the request runs; `settleSpend` replaces the reservation by the real cost when usage is known (in
 * waitUntil), and a request that ends without usage gives it back (releaseWhenDone, as token reservations do).
 * An uncapped subject is not asked at admission (no added latency) but still settled, so its month to date is
 * always known. Over a cap: 429 `rate_limited`, code `spend_cap_exceeded` or `token_cap_exceeded`, with
 * `Retry-After` until the next UTC month. If a capped subject's limiter cannot be reached the request is refused
 * with 503 (fail closed, as for rate limits).
 */
import type { Context, MiddlewareHandler } from 'hono';
import { LOCAL_MODELS, resolveModelId } from '../../shared/api.ts';
import { ERROR_CODES } from '../../shared/errors.ts';
import { formatMicros } from '../../shared/usage.ts';
import { pricesFrom } from '../config/index.ts';
import type { ApiKeyRecord, AppEnv } from '../env.ts';
import { EdgeError } from '../errors.ts';
import { type Releasable, releaseInBackground, releaseWhenDone, tokensToReserve } from '../rate-limit/index.ts';
import { costMicros, priceOf } from './cost.ts';
import type { MonthToDate, SpendAdmission, SpendCaps, SpendLimiter, SpendReservation } from './spend-limiter.ts';
import { tenantCaps } from './tenants.ts';

declare module 'hono' {
  interface ContextVariableMap {
    spendHolds: Map<string, SpendHold> | undefined;
  }
}

/** The SpendLimiter object names: one per key (by hash, never the key) and one per tenant. */
export function keySubject(key: ApiKeyRecord): string {
  return `key:${key.hash}`;
}
export function tenantSubject(tenant: string): string {
  return `tenant:${tenant}`;
}

export function spendLimiter(namespace: DurableObjectNamespace<SpendLimiter>, subject: string): DurableObjectStub<SpendLimiter> {
  return namespace.get(namespace.idFromName(subject));
}

export function keyCaps(key: ApiKeyRecord): SpendCaps {
  return { spendMicros: key.spendCapMonthMicros ?? null, tokens: key.tokenCapMonth ?? null };
}

function isCapped(caps: SpendCaps): boolean {
  return caps.spendMicros !== null || caps.tokens !== null;
}

/** One admitted request's reservation in one subject's limiter: settled once, or released. */
export class SpendHold implements Releasable {
  #held = true;

  constructor(
    private readonly limiter: DurableObjectStub<SpendLimiter>,
    private readonly id: string,
  ) {}

  async settle(micros: number, tokens: number): Promise<MonthToDate> {
    const held = this.#held;
    this.#held = false;
    return this.limiter.settle(held ? this.id : null, micros, tokens);
  }

  async release(): Promise<void> {
    if (!this.#held) return;
    this.#held = false;
    await this.limiter.release(this.id);
  }
}

/** A request's worst case: tokensToReserve's tokens (no per-minute cap), all at the model's dearer rate. */
function worstCase(c: Context<AppEnv>): SpendReservation {
  const request = c.get('chatRequest');
  const route = c.get('chatRoute');
  const unlimited = { requestsPerMinute: 1, tokensPerMinute: Number.MAX_SAFE_INTEGER };
  const { tokens, upToRemaining } = tokensToReserve(request, unlimited);
  const local = resolveModelId(request.model);
  const bounded = local ? Math.min(tokens, LOCAL_MODELS[local].maxContextLength) : tokens;
  const price = priceOf(pricesFrom(c.env), route.kind === 'local' ? route.model : route.name);
  const dearer = price ? Math.max(price.inputMicrosPerMillion, price.outputMicrosPerMillion) : 0;
  const micros = costMicros({ inputMicrosPerMillion: dearer, outputMicrosPerMillion: dearer }, bounded, 0);
  return { micros, tokens: bounded, upToRemaining };
}

function capExceeded(refusal: Extract<SpendAdmission, { allowed: false }>, whose: string, currency: string, now: number): EdgeError {
  const resetsAt = new Date(refusal.resetsAtMs).toISOString().replace('.000Z', 'Z');
  const limit = refusal.cap === 'spend' ? `spend cap of ${formatMicros(refusal.limit, currency)}` : `token cap of ${refusal.limit} tokens`;
  const waitMs = Math.max(0, refusal.resetsAtMs - now);
  return new EdgeError('rate_limited', `Monthly ${limit} for ${whose} reached; it resets at ${resetsAt}`, {
    code: refusal.cap === 'spend' ? ERROR_CODES.spendCapExceeded : ERROR_CODES.tokenCapExceeded,
    // The real wait (the HTTP meaning), not the rate limiter's ≤ 60 s hint: retrying sooner cannot succeed.
    headers: { 'retry-after': String(Math.ceil(waitMs / 1000)), 'retry-after-ms': String(waitMs) },
  });
}

/** Refuses a request over its key's or tenant's monthly cap; reserves its worst case where a cap is set. */
export function spendCaps(): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const key = c.get('apiKey');
    if (!key) return next();
    // A bad PRICES fails the request here, naming the variable, rather than every usage record after it.
    const prices = pricesFrom(c.env);
    const subjects = [
      { name: keySubject(key), caps: keyCaps(key), whose: `key ${key.id}` },
      { name: tenantSubject(key.tenant), caps: await tenantCaps(c.env.API_KEYS, key.tenant), whose: `tenant ${key.tenant}` },
    ].filter((subject) => isCapped(subject.caps));
    const holds = new Map<string, SpendHold>();
    if (subjects.length > 0) {
      const worst = worstCase(c);
      for (const subject of subjects) {
        const limiter = spendLimiter(c.env.SPEND_LIMITER, subject.name);
        let admission: SpendAdmission;
        try {
          admission = await limiter.admit(subject.caps, worst);
        } catch (error) {
          for (const hold of holds.values()) releaseInBackground(c, hold);
          console.error(JSON.stringify({ event: 'spend_limiter_unavailable', message: String(error) }));
          throw new EdgeError('overloaded', 'Spend limiter unavailable, retry shortly', { retryAfterSeconds: 1, cause: error });
        }
        if (!admission.allowed) {
          for (const hold of holds.values()) releaseInBackground(c, hold);
          throw capExceeded(admission, subject.whose, prices.currency, Date.now());
        }
        holds.set(subject.name, new SpendHold(limiter, admission.reservationId));
      }
    }
    c.set('spendHolds', holds);
    try {
      await next();
    } catch (error) {
      for (const hold of holds.values()) releaseInBackground(c, hold);
      throw error;
    }
    for (const hold of holds.values()) releaseWhenDone(c, hold);
  };
}

/** Adds a finished request's cost and tokens to its key's and tenant's month (settling their reservations). */
export async function settleSpend(c: Context<AppEnv>, key: ApiKeyRecord, micros: number, tokens: number): Promise<void> {
  const holds = c.get('spendHolds');
  await Promise.all(
    [keySubject(key), tenantSubject(key.tenant)].map((subject) => {
      const hold = holds?.get(subject);
      return hold ? hold.settle(micros, tokens) : spendLimiter(c.env.SPEND_LIMITER, subject).settle(null, micros, tokens);
    }),
  );
}

/** A subject's month to date (admin listings). */
export function monthToDate(namespace: DurableObjectNamespace<SpendLimiter>, subject: string): Promise<MonthToDate> {
  return spendLimiter(namespace, subject).peek();
}
