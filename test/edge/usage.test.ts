/**
 * The usage ledger through the whole worker in workerd: requests → events on the (captured) queue → the worker's
 * own `queue` handler → D1 (real miniflare D1, migrations from migrations/) → /admin/usage and /v1/usage.
 */
import { createExecutionContext, createMessageBatch, getQueueResult } from 'cloudflare:test';
import { beforeAll, describe, expect, it } from 'vitest';
import worker from '../../edge/index.ts';
import type { Usage } from '../../shared/api.ts';
import { type UsageEvent, type UsageReport, UsageReportSchema } from '../../shared/usage.ts';
import { ADMIN_SECRET, ledgerDb, migrateLedger, PARIS, readFrames, setup } from './harness.ts';

const db = ledgerDb;

beforeAll(migrateLedger);

type Edge = ReturnType<typeof setup>;

/** Hands events to the worker's queue handler as one batch; returns what it acked and retried. */
async function deliver(events: UsageEvent[], bindings: Edge['bindings'] = setup().bindings) {
  const batch = createMessageBatch<UsageEvent>(
    'sirocco-usage',
    events.map((body, index) => ({ id: `m${index}-${body.event_id}`, timestamp: new Date(), attempts: 1, body })),
  );
  const ctx = createExecutionContext();
  await worker.queue?.(batch as MessageBatch<unknown>, bindings, ctx);
  return getQueueResult(batch, ctx);
}

/** The usage a client received: the JSON body's, or a stream's last chunk's. */
async function receivedUsage(response: Response): Promise<Usage> {
  if (!response.headers.get('content-type')?.startsWith('text/event-stream')) return ((await response.json()) as { usage: Usage }).usage;
  let usage: Usage | undefined;
  for (const frame of await readFrames(response)) {
    if (!frame.startsWith('data: {')) continue;
    const chunk = JSON.parse(frame.slice('data: '.length)) as { usage?: Usage | null };
    if (chunk.usage) usage = chunk.usage;
  }
  if (!usage) throw new Error('the stream carried no usage');
  return usage;
}

async function adminGet<T>(edge: Edge, path: string): Promise<{ status: number; body: T }> {
  const response = await edge.send(path, { headers: { authorization: `Bearer ${ADMIN_SECRET}` } });
  return { status: response.status, body: (await response.json()) as T };
}

async function keyId(edge: Edge, tenant: string): Promise<{ key: string; id: string }> {
  const key = await edge.apiKey({ tenant, rpm: 10_000 });
  const { body } = await adminGet<{ data: { id: string; tenant: string }[] }>(edge, '/admin/keys');
  const ids = body.data.filter((row) => row.tenant === tenant).map((row) => row.id);
  if (ids.length !== 1) throw new Error(`expected one key for tenant ${tenant}`);
  return { key, id: ids[0] as string };
}

const today = () => new Date().toISOString().slice(0, 10);

describe('the usage ledger', () => {
  it('applies its migrations on an empty database', async () => {
    const { results } = await db().prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all<{ name: string }>();
    expect(results.map((row) => row.name)).toEqual(expect.arrayContaining(['usage_daily', 'usage_events', 'usage_hourly']));
  });

  it("records every request with usage — stream, JSON, a cache hit — and the ledger's totals equal what the clients received", async () => {
    const edge = setup({}, { realMetering: true });
    const alice = await keyId(edge, 'ledger-alice');
    const bob = await keyId(edge, 'ledger-bob');
    const received = new Map<string, Usage[]>([
      [alice.id, []],
      [bob.id, []],
    ]);
    const deterministic = { temperature: 0, messages: [{ role: 'user', content: crypto.randomUUID() }] };
    const plan = [
      { who: alice, body: {} },
      { who: alice, body: { stream: true } },
      { who: alice, body: { model: 'mistral-small', stream: true } },
      { who: alice, body: deterministic }, // MISS
      { who: alice, body: { ...deterministic, stream: true } }, // HIT, replayed as SSE
      { who: bob, body: {} },
      { who: bob, body: { stream: true } },
      { who: bob, body: { model: 'mistral-small' } },
    ];
    const cacheStatuses: string[] = [];
    for (const { who, body } of plan) {
      const response = await edge.chat(who.key, body, { cf: PARIS });
      expect(response.status).toBe(200);
      cacheStatuses.push(response.headers.get('x-cache') ?? '');
      received.get(who.id)?.push(await receivedUsage(response));
      await response.settled();
    }
    expect(cacheStatuses.filter((status) => status === 'HIT')).toHaveLength(1);
    expect(edge.usageEvents).toHaveLength(plan.length);
    expect(edge.usageEvents.filter((event) => event.cached)).toEqual([
      expect.objectContaining({ key_id: alice.id, cost_micros: 0, region: null }),
    ]);

    expect((await deliver(edge.usageEvents, edge.bindings)).ackAll).toBe(true);

    const { status, body } = await adminGet<UsageReport>(edge, `/admin/usage?group_by=key&from=${today()}&to=${today()}`);
    expect(status).toBe(200);
    const report = UsageReportSchema.parse(body);
    expect(report.currency).toBe('EUR');
    for (const [id, usages] of received) {
      const row = report.data.find((candidate) => candidate.key_id === id);
      expect(row).toMatchObject({
        requests: usages.length,
        prompt_tokens: usages.reduce((sum, usage) => sum + usage.prompt_tokens, 0),
        completion_tokens: usages.reduce((sum, usage) => sum + usage.completion_tokens, 0),
        cached_requests: id === alice.id ? 1 : 0,
        error_requests: 0,
        model: null,
        day: null,
        hour: null,
      });
    }
    // Priced per request, rounded up: tiny 5 × 0.14 + 3 × 0.42 = 1.96 → 2 µ€; small 5 × 0.6 + 3 × 1.8 = 8.4 → 9 µ€.
    expect(report.data.find((row) => row.key_id === alice.id)?.cost_micros).toBe(2 + 2 + 9 + 2 + 0);
    expect(report.data.find((row) => row.key_id === bob.id)?.cost_micros).toBe(2 + 2 + 9);
    expect(report.data.find((row) => row.key_id === alice.id)?.tenant).toBe('ledger-alice');
  });

  it('counts a redelivered batch once', async () => {
    const edge = setup({}, { realMetering: true });
    const carol = await keyId(edge, 'ledger-carol');
    for (let index = 0; index < 3; index++) {
      const response = await edge.chat(carol.key, { stream: index % 2 === 0 }, { cf: PARIS });
      await response.text();
      await response.settled();
    }
    expect(edge.usageEvents).toHaveLength(3);
    await deliver(edge.usageEvents, edge.bindings);
    await deliver(edge.usageEvents, edge.bindings); // the same messages again
    await deliver(edge.usageEvents.slice(1), edge.bindings); // and part of them in another batch

    const { body } = await adminGet<UsageReport>(edge, `/admin/usage?key_id=${carol.id}&group_by=key,model,day,hour`);
    expect(body.data).toHaveLength(1);
    expect(body.data[0]).toMatchObject({ key_id: carol.id, model: 'mistral-tiny', day: today(), requests: 3, prompt_tokens: 15 });
    const daily = await adminGet<UsageReport>(edge, `/admin/usage?key_id=${carol.id}`);
    expect(daily.body.data[0]).toMatchObject({ requests: 3, completion_tokens: 9, cost_micros: 6 });
    const events = await db().prepare('SELECT COUNT(*) AS n FROM usage_events WHERE key_id = ?').bind(carol.id).first<{ n: number }>();
    expect(events?.n).toBe(3);
  });

  it('retries a batch whose write failed, and acks nothing of it', async () => {
    const edge = setup({}, { realMetering: true });
    const dave = await keyId(edge, 'ledger-dave');
    const response = await edge.chat(dave.key, {}, { cf: PARIS });
    await response.text();
    await response.settled();
    const failingDb = { prepare: db().prepare.bind(db()), batch: async () => Promise.reject(new Error('D1_ERROR: database is locked')) };
    const failed = await deliver(edge.usageEvents, { ...edge.bindings, USAGE_DB: failingDb as unknown as D1Database });
    expect(failed.retryBatch.retry).toBe(true);
    expect(failed.explicitAcks).toEqual([]);
    expect(failed.ackAll).toBe(false);

    const retried = await deliver(edge.usageEvents, edge.bindings);
    expect(retried.ackAll).toBe(true);
    const { body } = await adminGet<UsageReport>(edge, `/admin/usage?key_id=${dave.id}`);
    expect(body.data[0]?.requests).toBe(1);
  });

  it('writes nothing for requests refused before a model: 401, 400, 403, 422, 429', async () => {
    const edge = setup({}, { realMetering: true });
    const limited = await edge.apiKey({ tenant: 'refused', rpm: 1, models: ['mistral-tiny'] });
    const first = await edge.chat(limited, {}, { cf: PARIS });
    await first.text();
    await first.settled();
    edge.usageEvents.length = 0;

    const refusals = [
      await edge.chat('sk-sirocco-not-a-real-key-at-all', {}), // 401
      await edge.chat(limited, { model: 'no-such-model' }), // 400
      await edge.chat(limited, { model: 'mistral-small' }), // 403
      await edge.chat(limited, { temperature: 'hot' }), // 422
      await edge.chat(limited, {}, { cf: PARIS }), // 429: one request per minute
    ];
    expect(refusals.map((response) => response.status)).toEqual([401, 400, 403, 422, 429]);
    for (const response of refusals) {
      await response.text();
      await response.settled();
    }
    expect(edge.usageEvents).toEqual([]);
  });
});

describe('GET /v1/usage', () => {
  it("shows only the caller's own key, and refuses grouping by key or tenant", async () => {
    const edge = setup({}, { realMetering: true });
    const erin = await keyId(edge, 'own-erin');
    const frank = await keyId(edge, 'own-frank');
    for (const [who, count] of [
      [erin, 2],
      [frank, 3],
    ] as const) {
      for (let index = 0; index < count; index++) {
        const response = await edge.chat(who.key, {}, { cf: PARIS });
        await response.text();
        await response.settled();
      }
    }
    await deliver(edge.usageEvents, edge.bindings);

    const own = await edge.send('/v1/usage?group_by=model,day', { headers: { authorization: `Bearer ${erin.key}` } });
    expect(own.status).toBe(200);
    const report = UsageReportSchema.parse(await own.json());
    expect(report.group_by).toEqual(['model', 'day']);
    expect(report.data).toEqual([
      expect.objectContaining({ key_id: null, tenant: null, model: 'mistral-tiny', day: today(), requests: 2 }),
    ]);

    for (const groupBy of ['key', 'tenant', 'model,key']) {
      const refused = await edge.send(`/v1/usage?group_by=${groupBy}`, { headers: { authorization: `Bearer ${erin.key}` } });
      expect(refused.status).toBe(400);
      expect(await refused.json()).toMatchObject({ type: 'invalid_request_error', param: 'group_by' });
    }
    const unauthenticated = await edge.send('/v1/usage');
    expect(unauthenticated.status).toBe(401);
  });
});

describe('GET /admin/usage', () => {
  it('names the bad parameter in a 400', async () => {
    const edge = setup();
    for (const [query, param] of [
      ['from=2026-02-30', 'from'],
      ['to=yesterday', 'to'],
      ['from=2026-12-03&to=2026-12-01', 'from'],
      ['group_by=key,region', 'group_by'],
      ['group_by=', 'group_by'],
    ] as const) {
      const { status, body } = await adminGet<{ type: string; param: string }>(edge, `/admin/usage?${query}`);
      expect(status, query).toBe(400);
      expect(body, query).toMatchObject({ type: 'invalid_request_error', param });
    }
    const events = await adminGet<{ param: string }>(edge, '/admin/usage/events?limit=501');
    expect(events.status).toBe(400);
    expect(events.body.param).toBe('limit');
  });

  it('lists raw events newest first, errors only on request', async () => {
    const edge = setup({}, { realMetering: true });
    const gina = await keyId(edge, 'events-gina');
    const ok = await edge.chat(gina.key, { stream: true }, { cf: PARIS });
    await ok.text();
    await ok.settled();
    for (const region of ['eu-west', 'us-east'] as const) edge.sidecars.sidecar(region).behaviour = 'error-mid-stream';
    const failed = await edge.chat(gina.key, { stream: true }, { cf: PARIS });
    await failed.text();
    await failed.settled();
    await deliver(edge.usageEvents, edge.bindings);

    const all = await adminGet<{ data: { status: number; request_id: string; cost_micros: number }[] }>(
      edge,
      `/admin/usage/events?key_id=${gina.id}`,
    );
    expect(all.body.data.map((event) => event.request_id)).toEqual(edge.usageEvents.map((event) => event.request_id).reverse());
    // The failed stream had no usage chunk: what it streamed ("Hello", one content chunk) is recorded, status 502.
    const errors = await adminGet<{ data: Record<string, unknown>[] }>(edge, `/admin/usage/events?key_id=${gina.id}&errors_only=true`);
    expect(errors.body.data).toEqual([
      {
        time: expect.any(String),
        request_id: failed.headers.get('x-request-id'),
        key_id: gina.id,
        tenant: 'events-gina',
        model: 'mistral-tiny',
        region: 'eu-west',
        prompt_tokens: 0,
        completion_tokens: 1,
        cached: false,
        status: 502,
        cost_micros: 1,
      },
    ]);
  });
});
