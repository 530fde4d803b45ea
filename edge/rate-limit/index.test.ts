/**
 * The rate-limit middleware against the real RateLimiter Durable Object in workerd: exact admission
 * under concurrency, the x-ratelimit-* headers, Mistral's 429 with Retry-After, token charging at the
 * end of a response, a window that survives the object being evicted, and the failure modes.
 */
import { abortAllDurableObjects, runInDurableObject } from 'cloudflare:test';
import { env } from 'cloudflare:workers';
import { type Context, Hono } from 'hono';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { describe, expect, it } from 'vitest';
import { toErrorResponse } from '../app.ts';
import { EdgeError } from '../errors.ts';
import { chargeTokens, RATE_LIMIT_HEADERS, type RateLimiter, type RateLimits, rateLimit, SAVE_INTERVAL_MS } from './index.ts';

type TestEnv = { Bindings: { RATE_LIMITER: DurableObjectNamespace<RateLimiter> } };

const bindings = env as unknown as TestEnv['Bindings'];

/** The limiter throws EdgeErrors: answer them as the edge app's onError does; other errors keep their message for the test to read. */
function answerLikeTheApp(error: Error, c: Context): Response {
  if (!EdgeError.isInstance(error)) return c.json({ object: 'error', message: error.message }, 500);
  const { status, body, headers } = toErrorResponse(error);
  return c.json(body, status as ContentfulStatusCode, headers);
}

/** An app metering every request by the `x-test-key` header, with the limits given. */
function meteredApp(limits: RateLimits) {
  const app = new Hono<TestEnv>();
  app.use(
    rateLimit<TestEnv>({
      namespace: (c) => c.env.RATE_LIMITER,
      subject: (c) => {
        const keyHash = c.req.header('x-test-key');
        return keyHash ? { keyHash, limits } : undefined;
      },
    }),
  );
  app.post('/v1/chat/completions', (c) => c.json({ ok: true }));
  app.onError(answerLikeTheApp);
  return (keyHash?: string) =>
    app.request('/v1/chat/completions', { method: 'POST', headers: keyHash ? { 'x-test-key': keyHash } : {} }, bindings);
}

/** The limiter saves its window within SAVE_INTERVAL_MS of a change (write-behind); wait for that save. */
const settleWriteBehind = () => new Promise((resolve) => setTimeout(resolve, SAVE_INTERVAL_MS + 100));

function remaining(response: Response) {
  return {
    requests: Number(response.headers.get(RATE_LIMIT_HEADERS.remainingRequests)),
    tokens: Number(response.headers.get(RATE_LIMIT_HEADERS.remainingTokens)),
  };
}

describe('rateLimit middleware', () => {
  it('admits exactly the limit out of 50 concurrent requests and rejects the rest with 429', async () => {
    const send = meteredApp({ requestsPerMinute: 10, tokensPerMinute: 100_000 });
    const key = crypto.randomUUID();
    const responses = await Promise.all(Array.from({ length: 50 }, () => send(key)));
    const statuses = responses.map((response) => response.status);
    expect(statuses.filter((status) => status === 200)).toHaveLength(10);
    expect(statuses.filter((status) => status === 429)).toHaveLength(40);
    // Every admitted request saw a different remaining count: the decisions were serialised.
    const remainders = responses.filter((r) => r.status === 200).map((r) => remaining(r).requests);
    expect(remainders.sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });

  it('reports limits and remaining budget on admitted responses', async () => {
    const send = meteredApp({ requestsPerMinute: 5, tokensPerMinute: 2_000 });
    const response = await send(crypto.randomUUID());
    expect(response.status).toBe(200);
    expect(Object.fromEntries([...response.headers].filter(([name]) => name.startsWith('x-ratelimit-')))).toEqual({
      'x-ratelimit-limit-req-minute': '5',
      'x-ratelimit-remaining-req-minute': '4',
      'x-ratelimit-limit-tokens-minute': '2000',
      'x-ratelimit-remaining-tokens-minute': '2000',
    });
  });

  it('answers over-limit requests in Mistral format with Retry-After and retry-after-ms (≤ 60 s)', async () => {
    const send = meteredApp({ requestsPerMinute: 1, tokensPerMinute: 1_000 });
    const key = crypto.randomUUID();
    expect((await send(key)).status).toBe(200);
    const rejected = await send(key);
    expect(rejected.status).toBe(429);
    expect(await rejected.json()).toEqual({
      object: 'error',
      message: 'Rate limit exceeded',
      type: 'rate_limited',
      param: null,
      code: '1300',
    });
    const retryAfterMs = Number(rejected.headers.get('retry-after-ms'));
    expect(retryAfterMs).toBeGreaterThan(55_000);
    expect(retryAfterMs).toBeLessThanOrEqual(60_000);
    expect(rejected.headers.get('retry-after')).toBe(String(Math.ceil(retryAfterMs / 1000)));
    expect(remaining(rejected).requests).toBe(0);
  });

  it('charges the tokens of finished responses and rejects once the token budget is spent', async () => {
    const limits = { requestsPerMinute: 100, tokensPerMinute: 1_000 };
    const send = meteredApp(limits);
    const key = crypto.randomUUID();
    expect(remaining(await send(key)).tokens).toBe(1_000);
    expect(await chargeTokens(bindings.RATE_LIMITER, { keyHash: key, limits }, 700)).toMatchObject({ remainingTokens: 300 });
    expect(remaining(await send(key))).toEqual({ requests: 98, tokens: 300 });
    await chargeTokens(bindings.RATE_LIMITER, { keyHash: key, limits }, 300);
    const rejected = await send(key);
    expect(rejected.status).toBe(429);
    expect(remaining(rejected)).toEqual({ requests: 98, tokens: 0 });
    // Another key is unaffected: one window per key.
    expect(remaining(await send(crypto.randomUUID())).tokens).toBe(1_000);
  });

  it('adds up concurrent charges exactly', async () => {
    const limits = { requestsPerMinute: 100, tokensPerMinute: 10_000 };
    const key = crypto.randomUUID();
    await Promise.all(Array.from({ length: 40 }, () => chargeTokens(bindings.RATE_LIMITER, { keyHash: key, limits }, 25)));
    expect(remaining(await meteredApp(limits)(key)).tokens).toBe(10_000 - 40 * 25);
  });

  it('keeps exact counts when the object is evicted, and admits again once the minute has passed', async () => {
    const send = meteredApp({ requestsPerMinute: 2, tokensPerMinute: 1_000 });
    const key = crypto.randomUUID();
    await send(key);
    await send(key);
    await settleWriteBehind();
    await abortAllDurableObjects(); // evicted: the next request reaches a fresh instance
    expect((await send(key)).status).toBe(429);

    // Age the stored window by a minute, as if the requests had happened 60 s ago.
    const stub = bindings.RATE_LIMITER.get(bindings.RATE_LIMITER.idFromName(key));
    await runInDurableObject(stub, async (_instance, state) => {
      const window = (await state.storage.get<{ latestMs: number }[]>('window')) ?? [];
      expect(window.length).toBeGreaterThan(0);
      await state.storage.put(
        'window',
        window.map((bucket) => ({ ...bucket, latestMs: bucket.latestMs - 60_000 })),
      );
    });
    await abortAllDurableObjects();
    const admitted = await send(key);
    expect(admitted.status).toBe(200);
    expect(remaining(admitted).requests).toBe(1);
  });

  it('lets requests without a subject through unmetered', async () => {
    const response = await meteredApp({ requestsPerMinute: 1, tokensPerMinute: 1 })();
    expect(response.status).toBe(200);
    expect(response.headers.get(RATE_LIMIT_HEADERS.limitRequests)).toBeNull();
  });

  it('reports malformed key limits as an error naming the field', async () => {
    const response = await meteredApp({ requestsPerMinute: -3, tokensPerMinute: 10 })(crypto.randomUUID());
    expect(response.status).toBe(500);
    expect(await response.json()).toMatchObject({ message: 'Rate limit requestsPerMinute must be a positive integer, got -3' });
  });

  it('fails closed with 503 and Retry-After when the limiter cannot be reached', async () => {
    const unreachable = {
      idFromName: (name: string) => bindings.RATE_LIMITER.idFromName(name),
      get: () => ({ admit: () => Promise.reject(new Error('Durable Object reset')) }),
    } as unknown as DurableObjectNamespace<RateLimiter>;
    const app = new Hono();
    app.use(
      rateLimit({ namespace: () => unreachable, subject: () => ({ keyHash: 'k', limits: { requestsPerMinute: 1, tokensPerMinute: 1 } }) }),
    );
    app.get('/', (c) => c.text('never'));
    app.onError(answerLikeTheApp);
    const response = await app.request('/');
    expect(response.status).toBe(503);
    expect(response.headers.get('retry-after')).toBe('1');
    expect(await response.json()).toMatchObject({
      object: 'error',
      type: 'overloaded',
      message: 'Rate limiter unavailable, retry shortly',
    });
  });

  it('refuses to be built without its option functions', () => {
    expect(() => rateLimit({} as Parameters<typeof rateLimit>[0])).toThrow(/needs `namespace` and `subject` functions/);
  });
});
