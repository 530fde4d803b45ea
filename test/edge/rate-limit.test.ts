/**
 * Token budgets under concurrency, through the whole worker in workerd: each request reserves its
 * worst case (prompt estimate + max_tokens) in the key's RateLimiter at admission, the reservation
 * is settled to the real usage when the response ends, and released when the request fails or its
 * client leaves.
 */
import { describe, expect, it } from 'vitest';
import { PARIS, setup } from './harness.ts';

const remainingTokens = (response: Response) => Number(response.headers.get('x-ratelimit-remaining-tokens-minute'));

/** Reads a response to its end and waits for its background work (usage settlement, release). */
async function finish(response: Response & { settled: () => Promise<unknown> }): Promise<void> {
  if (!response.bodyUsed) await response.text();
  await response.settled();
}

describe('token reservations', () => {
  it('admits at most budget / (prompt + max_tokens) of 100 concurrent requests, then the window holds their real usage', async () => {
    const edge = setup({}, { realMetering: true });
    for (const region of ['eu-west', 'us-east'] as const) edge.sidecars.sidecar(region).startDelayMs = 200; // all 100 in flight at once
    const key = await edge.apiKey({ tpm: 100, rpm: 1_000 });

    // "Hi" bounds to 11 prompt tokens (BOS + 2 bytes + 8 template tokens): each request reserves 11 + 10 = 21.
    const responses = await Promise.all(Array.from({ length: 100 }, () => edge.chat(key, { max_tokens: 10 }, { cf: PARIS })));
    const admitted = responses.filter((response) => response.status === 200).length;
    const rejected = responses.filter((response) => response.status === 429);
    expect(admitted).toBe(4);
    expect(rejected).toHaveLength(96);
    const refusal = rejected[0];
    expect(await refusal?.json()).toEqual({
      object: 'error',
      message: 'Rate limit exceeded',
      type: 'rate_limited',
      param: null,
      code: '1300',
    });
    expect(refusal?.headers.get('x-ratelimit-limit-tokens-minute')).toBe('100');
    expect(Number(refusal?.headers.get('retry-after-ms'))).toBeGreaterThan(0);
    await Promise.all(responses.map(finish));

    // Settled to the fake sidecar's 8 tokens each: 32 spent, 68 left, no reservation outstanding.
    for (const region of ['eu-west', 'us-east'] as const) edge.sidecars.sidecar(region).startDelayMs = 0;
    const tooBig = await edge.chat(key, { max_tokens: 58 }, { cf: PARIS }); // 11 + 58 = 69 > 68
    expect(tooBig.status).toBe(429);
    expect(remainingTokens(tooBig)).toBe(68);
    await finish(tooBig);
    const fits = await edge.chat(key, { max_tokens: 57 }, { cf: PARIS }); // 11 + 57 = 68
    expect(fits.status).toBe(200);
    expect(remainingTokens(fits)).toBe(68);
    await finish(fits);
    const spent = await edge.chat(key, { max_tokens: 10 }, { cf: PARIS }); // 40 spent: 60 left
    expect(remainingTokens(spent)).toBe(60);
    await finish(spent);
  });

  it('releases the reservation of a request that failed upstream or was refused by the sidecar', async () => {
    const edge = setup({}, { realMetering: true });
    const key = await edge.apiKey({ tpm: 100, rpm: 1_000 });
    for (const behaviour of ['http-500', 'http-400'] as const) {
      for (const region of ['eu-west', 'us-east'] as const) edge.sidecars.sidecar(region).behaviour = behaviour;
      const failed = await edge.chat(key, { max_tokens: 90 }, { cf: PARIS }); // reserves the whole 100 (11 + 90, capped)
      expect(failed.status).toBeGreaterThanOrEqual(400);
      expect(failed.status).not.toBe(429);
      await finish(failed);
    }
    for (const region of ['eu-west', 'us-east'] as const) edge.sidecars.sidecar(region).behaviour = 'ok';
    const next = await edge.chat(key, { max_tokens: 90 }, { cf: PARIS });
    expect(next.status).toBe(200);
    expect(remainingTokens(next)).toBe(100); // nothing was charged for the failures
    await finish(next);
  });

  it('releases the reservation of an answer served from the cache', async () => {
    const edge = setup({}, { realMetering: true });
    const key = await edge.apiKey({ tpm: 100, rpm: 1_000 });
    // A 36-byte prompt bounds to 45 tokens: each of these reserves 45 + 40 = 85.
    const deterministic = { temperature: 0, max_tokens: 40, messages: [{ role: 'user', content: crypto.randomUUID() }] };
    const fresh = await edge.chat(key, deterministic, { cf: PARIS }); // settled to its real 8
    expect(fresh.headers.get('x-cache')).toBe('MISS');
    await finish(fresh);
    const cached = await edge.chat(key, deterministic, { cf: PARIS }); // 85 of the 92 left, then uses none
    expect(cached.headers.get('x-cache')).toBe('HIT');
    await finish(cached);
    const next = await edge.chat(key, { max_tokens: 80 }, { cf: PARIS }); // 11 + 80 = 91 fits only if the hit gave its 85 back
    expect(next.status).toBe(200);
    expect(remainingTokens(next)).toBe(92);
    await finish(next);
  });

  it('holds the reservation while a stream runs and releases it when the client leaves', async () => {
    const edge = setup({}, { realMetering: true });
    const key = await edge.apiKey({ tpm: 100, rpm: 1_000 });
    for (const region of ['eu-west', 'us-east'] as const) edge.sidecars.sidecar(region).behaviour = 'stall';
    const stream = await edge.chat(key, { max_tokens: 90, stream: true }, { cf: PARIS });
    expect(stream.status).toBe(200);
    const reader = stream.body?.getReader();
    await reader?.read(); // the first chunk: the stream is running

    const meanwhile = await edge.chat(key, { max_tokens: 90 }, { cf: PARIS });
    expect(meanwhile.status).toBe(429); // 91 reserved by the running stream
    await finish(meanwhile);

    await reader?.cancel('client left');
    await stream.settled();
    for (const region of ['eu-west', 'us-east'] as const) edge.sidecars.sidecar(region).behaviour = 'ok';
    const after = await edge.chat(key, { max_tokens: 90 }, { cf: PARIS });
    expect(after.status).toBe(200);
    await finish(after);
  });

  it('without max_tokens, takes what is left of the budget: one such request at a time on a small budget', async () => {
    const edge = setup({}, { realMetering: true });
    for (const region of ['eu-west', 'us-east'] as const) edge.sidecars.sidecar(region).startDelayMs = 100;
    const key = await edge.apiKey({ tpm: 100, rpm: 1_000 });
    const responses = await Promise.all(Array.from({ length: 5 }, () => edge.chat(key, {}, { cf: PARIS })));
    expect(responses.map((response) => response.status).sort()).toEqual([200, 429, 429, 429, 429]);
    await Promise.all(responses.map(finish));
    const next = await edge.chat(key, {}, { cf: PARIS });
    expect(next.status).toBe(200);
    expect(remainingTokens(next)).toBe(92); // the first one's real 8 tokens
    await finish(next);
  });
});
