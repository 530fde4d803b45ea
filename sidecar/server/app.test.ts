/**
 * The sidecar app in-process, without models: request ids in the shared format are echoed unchanged
 * (so log lines match the edge's), others are replaced, and error responses carry the id and the
 * shared retry headers. Cross-process behaviour is covered by test/sidecar/.
 */
import { describe, expect, it } from 'vitest';
import { MistralErrorBodySchema } from '../../shared/errors.ts';
import { HEADERS, isValidRequestId } from '../../shared/protocol.ts';
import { createSidecarApp, type SidecarPhase } from './app.ts';
import { createLogger } from './logger.ts';
import { createSidecarMetrics } from './metrics.ts';

function sidecarApp(phase: SidecarPhase = 'ready') {
  const lines: Record<string, unknown>[] = [];
  const app = createSidecarApp({
    state: { phase, models: [] },
    region: 'test',
    maxBatch: 1,
    maxQueue: 1,
    secret: null,
    metricsToken: null,
    maxBodyBytes: 1024,
    metrics: createSidecarMetrics({ defaultMetrics: false }),
    logger: createLogger({ level: 'debug', write: (line) => lines.push(JSON.parse(line) as Record<string, unknown>) }),
  });
  return { app, lines };
}

describe('sidecar request ids', () => {
  it('echoes an id with `.` and `:` unchanged, in the response and the access log', async () => {
    const { app, lines } = sidecarApp();
    const response = await app.request('/health', { headers: { [HEADERS.requestId]: 'req.2026:abc' } });
    expect(response.status).toBe(200);
    expect(response.headers.get(HEADERS.requestId)).toBe('req.2026:abc');
    expect(lines).toContainEqual(expect.objectContaining({ msg: 'request', requestId: 'req.2026:abc', path: '/health' }));
  });

  it('echoes the id on error responses too, with the retry headers of a 503', async () => {
    const { app } = sidecarApp('loading');
    const response = await app.request('/v1/models', { headers: { [HEADERS.requestId]: 'req.2026:loading' } });
    expect(response.status).toBe(503);
    expect(response.headers.get(HEADERS.requestId)).toBe('req.2026:loading');
    expect(response.headers.get('retry-after')).toBe('5');
    expect(response.headers.get('retry-after-ms')).toBe('5000');
    expect(MistralErrorBodySchema.parse(await response.json()).type).toBe('overloaded');

    const notFound = await app.request('/nope', { headers: { [HEADERS.requestId]: 'req.2026:missing' } });
    expect(notFound.status).toBe(404);
    expect(notFound.headers.get(HEADERS.requestId)).toBe('req.2026:missing');
  });

  it.each([
    ['missing', undefined],
    ['too short', 'abc'],
    ['able to forge log fields', 'bad id "level":"error"'],
    ['with characters outside the format', 'req=2026+abc'],
  ])('replaces an id that is %s with a fresh one in the format', async (_name, incoming) => {
    const { app } = sidecarApp();
    const response = await app.request('/health', { headers: incoming === undefined ? {} : { [HEADERS.requestId]: incoming } });
    const id = response.headers.get(HEADERS.requestId);
    expect(id).not.toBe(incoming);
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    expect(isValidRequestId(id ?? '')).toBe(true);
  });
});
