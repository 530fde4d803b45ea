/**
 * The access log: one structured JSON line per request, written just after the response has been
 * handed to the runtime (a log line is among the costliest steps of the hot path, so it never
 * delays the first byte), and always before the request's execution context settles.
 */
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { setup } from './harness.ts';

type LogLine = Record<string, unknown>;

function captureLogs(): LogLine[] {
  const lines: LogLine[] = [];
  vi.spyOn(console, 'log').mockImplementation((line: unknown) => {
    if (typeof line === 'string') lines.push(JSON.parse(line) as LogLine);
  });
  return lines;
}

describe('the access log', () => {
  const edge = setup({}, { realMetering: true });
  let key: string;
  beforeAll(async () => {
    key = await edge.apiKey({ tenant: 'log-tenant' });
  });
  afterEach(() => vi.restoreAllMocks());

  it('is written after the response, once, with the route, status, tenant and upstream fields', async () => {
    const lines = captureLogs();
    const response = await edge.chat(key, { temperature: 0.7 });
    expect(response.status).toBe(200);
    // The response is already in hand; its log line follows on a later turn of the event loop.
    expect(lines.filter((line) => line.event === 'request')).toEqual([]);

    await response.text();
    await response.settled();
    const access = lines.filter((line) => line.event === 'request');
    expect(access).toHaveLength(1);
    expect(access[0]).toMatchObject({
      level: 'info',
      method: 'POST',
      path: '/v1/chat/completions',
      status: 200,
      tenant: 'log-tenant',
      model: 'mistral-tiny',
      stream: false,
      requestId: response.headers.get('x-request-id'),
    });
    expect(access[0]?.durationMs).toEqual(expect.any(Number));
    expect(typeof access[0]?.region).toBe('string');
    // Metering also runs after the response, and its usage line carries the same request id.
    expect(lines.find((line) => line.event === 'usage')).toMatchObject({
      requestId: response.headers.get('x-request-id'),
      tenant: 'log-tenant',
    });
  });

  it('records error responses too', async () => {
    const lines = captureLogs();
    const response = await edge.chat(key, { model: 'no-such-model' });
    expect(response.status).toBe(400);
    await response.settled();
    expect(lines.filter((line) => line.event === 'request')).toEqual([
      expect.objectContaining({ path: '/v1/chat/completions', status: 400, tenant: 'log-tenant' }),
    ]);
  });
});
