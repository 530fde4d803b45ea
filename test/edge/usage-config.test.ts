/**
 * Prices, costs, retention and a deploy without the ledger's bindings, in workerd.
 */
import { createExecutionContext, createScheduledController, waitOnExecutionContext } from 'cloudflare:test';
import { env } from 'cloudflare:workers';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { DEFAULT_PRICES, pricesFrom } from '../../edge/config/index.ts';
import worker from '../../edge/index.ts';
import { costMicros, requestCostMicros, writeUsageEvents } from '../../edge/usage/index.ts';
import type { UsageEvent } from '../../shared/usage.ts';
import { ledgerDb, migrateLedger, PARIS, setup } from './harness.ts';

const db = ledgerDb;

beforeAll(migrateLedger);
afterEach(() => vi.restoreAllMocks());

const DAY_MS = 86_400_000;

function event(overrides: Partial<UsageEvent>): UsageEvent {
  return {
    event_id: crypto.randomUUID(),
    time: new Date().toISOString(),
    request_id: crypto.randomUUID(),
    key_id: '0123456789abcdef',
    tenant: 'retention',
    model: 'mistral-tiny',
    region: 'eu-west',
    prompt_tokens: 5,
    completion_tokens: 3,
    cached: false,
    status: 200,
    cost_micros: 2,
    ...overrides,
  };
}

describe('prices and costs', () => {
  it('parses the default table into micro-units per million tokens', () => {
    expect(pricesFrom({ ...env, PRICES: undefined })).toEqual({
      currency: 'EUR',
      models: {
        'mistral-tiny': { inputMicrosPerMillion: 140_000, outputMicrosPerMillion: 420_000 },
        'mistral-small': { inputMicrosPerMillion: 600_000, outputMicrosPerMillion: 1_800_000 },
        'mistral-medium': { inputMicrosPerMillion: 2_500_000, outputMicrosPerMillion: 7_500_000 },
      },
    });
    expect(pricesFrom({ ...env, PRICES: DEFAULT_PRICES })).toEqual(pricesFrom({ ...env, PRICES: undefined }));
  });

  it('computes costs exactly in integers, rounded up once per request', () => {
    const tiny = { inputMicrosPerMillion: 140_000, outputMicrosPerMillion: 420_000 };
    expect(costMicros(tiny, 0, 0)).toBe(0);
    expect(costMicros(tiny, 5, 3)).toBe(2); // 1.96 µ€
    expect(costMicros(tiny, 1_000_000, 1_000_000)).toBe(560_000); // exactly 0.56 €
    expect(costMicros(tiny, 1_000_001, 0)).toBe(140_001); // 140,000.14 µ€, up
    // Beyond 2^53 in the intermediate product: still exact.
    const dear = { inputMicrosPerMillion: 1_000_000_000_000, outputMicrosPerMillion: 0 };
    expect(costMicros(dear, 9_007_199, 0)).toBe(9_007_199_000_000);
  });

  it('prices a local model by its aliases too, and an unpriced model at 0 with one warning', () => {
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => {});
    const prices = pricesFrom({ ...env, PRICES: undefined });
    expect(requestCostMicros(prices, 'open-mistral-7b', 5, 3)).toBe(2);
    expect(requestCostMicros(prices, 'some-upstream-model', 1000, 1000)).toBe(0);
    expect(requestCostMicros(prices, 'some-upstream-model', 1000, 1000)).toBe(0);
    const warnings = warn.mock.calls.map((call) => String(call[0])).filter((line) => line.includes('model_unpriced'));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain('some-upstream-model');
  });

  it.each([
    ['not JSON', '{', /PRICES: not valid JSON/],
    ['a negative price', '{"currency":"EUR","models":{"mistral-tiny":{"input":-1,"output":1}}}', /PRICES:.*input/],
    ['more than six decimals', '{"currency":"EUR","models":{"mistral-tiny":{"input":0.0000001,"output":1}}}', /six decimals/],
    ['a bad currency', '{"currency":"euro","models":{}}', /PRICES:.*currency/],
  ])('answers a PRICES with %s by a 500 naming the variable', async (_name, value, message) => {
    const edge = setup({ PRICES: value });
    const key = await edge.apiKey();
    const response = await edge.chat(key, {});
    expect(response.status).toBe(500);
    expect(await response.json()).toMatchObject({ type: 'internal_error', message: expect.stringMatching(message) });
  });
});

describe('retention', () => {
  it('the daily cron deletes raw events older than USAGE_RETENTION_DAYS and keeps the rollups', async () => {
    const old = event({ time: new Date(Date.now() - 8 * DAY_MS).toISOString() });
    const recent = event({ time: new Date(Date.now() - 6 * DAY_MS).toISOString() });
    await writeUsageEvents(db(), [old, recent]);
    const ctx = createExecutionContext();
    await worker.scheduled?.(createScheduledController({ cron: '17 3 * * *' }), { ...env, USAGE_RETENTION_DAYS: '7' }, ctx);
    await waitOnExecutionContext(ctx);

    const left = await db().prepare("SELECT event_id FROM usage_events WHERE tenant = 'retention'").all<{ event_id: string }>();
    expect(left.results.map((row) => row.event_id)).toEqual([recent.event_id]);
    const rolled = await db()
      .prepare("SELECT SUM(requests) AS requests FROM usage_daily WHERE tenant = 'retention'")
      .first<{ requests: number }>();
    expect(rolled?.requests).toBe(2);
  });
});

describe('a deploy without the ledger bindings', () => {
  it('serves requests and says once that usage is not recorded', async () => {
    const warn = vi.spyOn(console, 'warn');
    const edge = setup({ USAGE_QUEUE: undefined, USAGE_DB: undefined }, { realMetering: true });
    const key = await edge.apiKey({ rpm: 1_000 });
    for (let index = 0; index < 3; index++) {
      const response = await edge.chat(key, {}, { cf: PARIS });
      expect(response.status).toBe(200);
      await response.text();
      await response.settled();
    }
    const unbound = warn.mock.calls.map((call) => String(call[0])).filter((line) => line.includes('usage_ledger_unbound'));
    expect(unbound).toHaveLength(1);

    const report = await edge.send('/admin/usage', { headers: { authorization: 'Bearer test-admin-secret' } });
    expect(report.status).toBe(500);
    expect(await report.json()).toMatchObject({ type: 'internal_error', message: expect.stringMatching(/USAGE_DB/) });
  });
});
