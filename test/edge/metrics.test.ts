/**
 * The edge's `GET /metrics`: Prometheus text guarded by the admin secret, request counters by status, model, region
 * and cache status (and tokens by model and region) that move as requests are served; and the access-log line those
 * counters are taken from, with key id, model, region and tokens (never the key).
 */
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { ADMIN_SECRET, setup } from './harness.ts';

const edge = setup();
let key: string;
beforeAll(async () => {
  key = await edge.apiKey({ tenant: 'metrics-tenant' });
});
afterEach(() => vi.restoreAllMocks());

async function scrape(): Promise<string> {
  const response = await edge.send('/metrics', { headers: { authorization: `Bearer ${ADMIN_SECRET}` } });
  expect(response.status).toBe(200);
  expect(response.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  return response.text();
}

/** The value of one series, 0 when it is not there yet. */
function seriesValue(text: string, series: RegExp): number {
  const line = text.split('\n').find((candidate) => series.test(candidate));
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe('GET /metrics', () => {
  it('needs the admin secret', async () => {
    expect((await edge.send('/metrics')).status).toBe(401);
    expect((await edge.send('/metrics', { headers: { authorization: 'Bearer not-the-secret' } })).status).toBe(401);
    expect((await edge.send('/metrics', { headers: { authorization: `Bearer ${key}` } })).status).toBe(401);
  });

  it('counts requests by status, model, region and cache status, and tokens by model and region', async () => {
    const served = /^sirocco_edge_requests_total\{status="200",model="mistral-tiny",region="(eu-west|us-east)",cache="BYPASS"\} /;
    const unauthorized = /^sirocco_edge_requests_total\{status="401",model="",region="",cache=""\} /;
    const tokens = /^sirocco_edge_tokens_total\{model="mistral-tiny",region="(eu-west|us-east)"\} /;
    const before = await scrape();

    const answered = await edge.chat(key, { temperature: 0.7 });
    expect(answered.status).toBe(200);
    await answered.text();
    await answered.settled();
    const streamed = await edge.chat(key, { temperature: 0.7, stream: true });
    await streamed.text();
    await streamed.settled();
    const refused = await edge.send('/v1/models');
    expect(refused.status).toBe(401);
    await refused.settled();

    const after = await scrape();
    expect(after).toContain('# TYPE sirocco_edge_requests_total counter');
    expect(seriesValue(after, served) - seriesValue(before, served)).toBe(2);
    expect(seriesValue(after, unauthorized) - seriesValue(before, unauthorized)).toBe(1);
    expect(seriesValue(after, tokens)).toBeGreaterThan(seriesValue(before, tokens));
  });
});

describe('the access-log line', () => {
  it('has the key id, model, region, cache status and tokens, for a stream too (written at its end), and not the key', async () => {
    const lines: Array<Record<string, unknown>> = [];
    vi.spyOn(console, 'log').mockImplementation((line: unknown) => {
      if (typeof line === 'string') lines.push(JSON.parse(line) as Record<string, unknown>);
    });
    const response = await edge.chat(key, { temperature: 0.7, stream: true });
    expect(response.status).toBe(200);
    await response.text();
    await response.settled();

    const access = lines.filter((line) => line.event === 'request');
    expect(access).toHaveLength(1);
    expect(access[0]).toMatchObject({
      status: 200,
      keyId: expect.stringMatching(/^[0-9a-f]{16}$/),
      model: 'mistral-tiny',
      region: expect.stringMatching(/^(eu-west|us-east)$/),
      cache: 'BYPASS',
      tokens: expect.any(Number),
      promptTokens: expect.any(Number),
      completionTokens: expect.any(Number),
    });
    expect(JSON.stringify(lines)).not.toContain(key);
  });

  it('names the model asked for on a refused request', async () => {
    const lines: Array<Record<string, unknown>> = [];
    vi.spyOn(console, 'log').mockImplementation((line: unknown) => {
      if (typeof line === 'string') lines.push(JSON.parse(line) as Record<string, unknown>);
    });
    const response = await edge.chat(key, { model: 'no-such-model' });
    expect(response.status).toBe(400);
    await response.settled();
    expect(lines.find((line) => line.event === 'request')).toMatchObject({ status: 400, model: 'no-such-model' });
  });
});
