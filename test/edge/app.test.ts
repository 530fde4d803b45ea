/**
 * The assembled worker in workerd: request ids on every response, the public routes, the rate-limit
 * and cache middleware wired into the chat route, and upstream (API-only model) proxying.
 */

import { exports } from 'cloudflare:workers';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { PARIS, setup } from './harness.ts';

describe('the worker', () => {
  const edge = setup();
  let key: string;
  beforeAll(async () => {
    key = await edge.apiKey({ rpm: 50 });
  });

  it('puts an x-request-id on success, error and not-found responses', async () => {
    const responses = [
      await edge.send('/health'),
      await edge.send('/v1/models'),
      await edge.send('/nope', { headers: { authorization: `Bearer ${key}` } }),
    ];
    const ids = responses.map((response) => response.headers.get('x-request-id'));
    for (const id of ids) expect(id).toMatch(/^[0-9a-f-]{36}$/);
    expect(new Set(ids).size).toBe(3);
    expect(responses[2]?.status).toBe(404);
    expect(await responses[2]?.json()).toMatchObject({ object: 'error', type: 'not_found' });
  });

  it('ignores a client request id that could forge log fields', async () => {
    const response = await edge.send('/health', { headers: { 'x-request-id': 'bad id "level":"error"' } });
    expect(response.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('reports every region on /health without authentication', async () => {
    const body = (await (await edge.send('/health')).json()) as { status: string; regions: { region: string; circuit: string }[] };
    expect(body.status).toBe('ok');
    expect(body.regions.map((region) => [region.region, region.circuit])).toEqual([
      ['eu-west', 'closed'],
      ['us-east', 'closed'],
    ]);
  });

  it('lists both local models in Mistral format', async () => {
    const body = (await (await edge.send('/v1/models', { headers: { authorization: `Bearer ${key}` } })).json()) as {
      object: string;
      data: { id: string; object: string; owned_by: string; aliases: string[]; max_context_length: number }[];
    };
    expect(body.object).toBe('list');
    expect(body.data.map((model) => model.id)).toEqual(['mistral-tiny', 'mistral-small']);
    expect(body.data[0]).toMatchObject({
      object: 'model',
      owned_by: 'mistralai',
      max_context_length: 32768,
      aliases: ['open-mistral-7b', 'mistral-tiny-2312'],
    });
  });

  it('retrieves one model card by id or alias, and 404s an unknown one', async () => {
    const get = (id: string) => edge.send(`/v1/models/${id}`, { headers: { authorization: `Bearer ${key}` } });
    expect(await (await get('open-mixtral-8x7b')).json()).toMatchObject({ id: 'mistral-small', object: 'model' });
    const missing = await get('mistral-large');
    expect(missing.status).toBe(404);
    expect(await missing.json()).toMatchObject({ object: 'error', type: 'not_found', message: 'Model not found: mistral-large' });
  });

  it('meters chat requests (x-ratelimit-* headers) and caches deterministic ones (x-cache)', async () => {
    const first = await edge.chat(key, { temperature: 0 }, { cf: PARIS });
    expect(first.status).toBe(200);
    expect(first.headers.get('x-ratelimit-limit-req-minute')).toBe('50');
    expect(first.headers.get('x-cache')).toBe('MISS');
    await first.json();
    await first.settled();
    const second = await edge.chat(key, { temperature: 0 }, { cf: PARIS });
    expect(second.headers.get('x-cache')).toBe('HIT');
    expect(((await second.json()) as { choices: unknown[] }).choices).toHaveLength(1);
    expect(edge.sidecars.sidecar('eu-west').requests).toHaveLength(1);
  });

  it("answers an over-limit request through onError with Mistral's 429, the x-ratelimit-* and Retry-After headers and the request id", async () => {
    const limited = await edge.apiKey({ rpm: 1, tpm: 10_000 });
    const admitted = await edge.chat(limited, {}, { cf: PARIS });
    expect(admitted.status).toBe(200);
    await admitted.json();
    const rejected = await edge.chat(limited, {}, { cf: PARIS, headers: { 'x-request-id': 'req.2026:limited' } });
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
    expect(Object.fromEntries([...rejected.headers].filter(([name]) => name.startsWith('x-') || name.startsWith('retry-')))).toEqual({
      'x-ratelimit-limit-req-minute': '1',
      'x-ratelimit-remaining-req-minute': '0',
      'x-ratelimit-limit-tokens-minute': '10000',
      'x-ratelimit-remaining-tokens-minute': '10000',
      'retry-after': String(Math.ceil(retryAfterMs / 1000)),
      'retry-after-ms': String(retryAfterMs),
      'x-request-id': 'req.2026:limited',
    });
  });
});

describe('token metering', () => {
  it('charges the usage of finished JSON and streamed answers to the key, after the response', async () => {
    const edge = setup({}, { realMetering: true });
    const key = await edge.apiKey({ tpm: 100, rpm: 10 });
    const remainingTokens = (response: Response) => Number(response.headers.get('x-ratelimit-remaining-tokens-minute'));

    const first = await edge.chat(key, {}, { cf: PARIS });
    expect(remainingTokens(first)).toBe(100);
    await first.json();
    await first.settled();

    const streamed = await edge.chat(key, { stream: true }, { cf: PARIS });
    expect(remainingTokens(streamed)).toBe(92); // the JSON answer's 8 tokens
    await streamed.text();
    await streamed.settled();

    expect(remainingTokens(await edge.chat(key, {}, { cf: PARIS }))).toBe(84); // and the stream's 8
  });
});

describe('upstream routes', () => {
  it('proxies an API-only model to the configured Mistral-compatible API with the operator key', async () => {
    const seen: { url: string; authorization: string | null; body: { model: string } }[] = [];
    const edge = setup(
      {
        UPSTREAMS: JSON.stringify({
          'mistral-medium': { url: 'https://api.upstream.test/', apiKeySecret: 'UPSTREAM_KEY', model: 'mistral-medium-2312' },
        }),
        UPSTREAM_KEY: 'operator-secret',
      },
      {
        wrapFetch: (sidecarFetch) => async (input, init) => {
          const request = new Request(input, init);
          if (new URL(request.url).host !== 'api.upstream.test') return sidecarFetch(input, init);
          seen.push({ url: request.url, authorization: request.headers.get('authorization'), body: await request.json() });
          return Response.json({
            id: 'up-1',
            object: 'chat.completion',
            created: 1,
            model: 'mistral-medium-2312',
            choices: [{ index: 0, message: { role: 'assistant', content: 'from upstream' }, finish_reason: 'stop' }],
            usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 },
          });
        },
      },
    );
    const key = await edge.apiKey();
    const response = await edge.chat(key, { model: 'mistral-medium' });
    expect(response.status).toBe(200);
    expect(((await response.json()) as { choices: { message: { content: string } }[] }).choices[0]?.message.content).toBe('from upstream');
    expect(seen).toEqual([
      {
        url: 'https://api.upstream.test/v1/chat/completions',
        authorization: 'Bearer operator-secret',
        body: expect.objectContaining({ model: 'mistral-medium-2312' }),
      },
    ]);

    const models = (await (await edge.send('/v1/models', { headers: { authorization: `Bearer ${key}` } })).json()) as {
      data: { id: string }[];
    };
    expect(models.data.map((model) => model.id)).toContain('mistral-medium');
  });
});

describe('the deployed entry point', () => {
  it('serves /health through exports.default.fetch with the wrangler.toml bindings', async () => {
    const log = vi.spyOn(console, 'log');
    try {
      const response = await exports.default.fetch('https://edge.test/health');
      expect(response.status).toBe(200);
      expect(((await response.json()) as { regions: { region: string }[] }).regions.map((region) => region.region)).toEqual([
        'eu-west',
        'us-east',
      ]);
      // Its access line is written after the response, in the runtime's own execution context:
      // waited for here, so that it cannot outlive the file's worker.
      await vi.waitFor(() => expect(log.mock.calls.some(([line]) => String(line).includes('"path":"/health"'))).toBe(true));
    } finally {
      log.mockRestore();
    }
  });
});
