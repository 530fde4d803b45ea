/** CORS from the CORS_ORIGINS var, through the worker app in workerd. */
import { describe, expect, it } from 'vitest';
import { setup } from './harness.ts';

const preflight = (origin: string) => ({
  method: 'OPTIONS',
  headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type' },
});

describe('corsFromEnv', () => {
  it('answers preflights for a listed origin with the methods and headers browser apps need', async () => {
    const edge = setup({ CORS_ORIGINS: 'https://app.example, https://other.example' });
    const response = await edge.send('/v1/chat/completions', preflight('https://app.example'));
    expect(response.status).toBe(204);
    expect(response.headers.get('access-control-allow-origin')).toBe('https://app.example');
    expect(response.headers.get('access-control-allow-methods')).toContain('POST');
    expect(response.headers.get('access-control-allow-headers')?.toLowerCase()).toContain('authorization');
  });

  it('does not allow an origin that is not listed', async () => {
    const edge = setup({ CORS_ORIGINS: 'https://app.example' });
    const response = await edge.send('/v1/chat/completions', preflight('https://evil.example'));
    expect(response.headers.get('access-control-allow-origin')).toBeNull();
  });

  it('allows any origin with "*" and exposes the request id and rate-limit headers on real responses', async () => {
    const edge = setup({ CORS_ORIGINS: '*' });
    const key = await edge.apiKey();
    const response = await edge.chat(key, {}, { headers: { origin: 'https://anywhere.example' } });
    expect(response.status).toBe(200);
    expect(response.headers.get('access-control-allow-origin')).toBe('*');
    const exposed = response.headers.get('access-control-expose-headers') ?? '';
    for (const header of ['x-request-id', 'x-ratelimit-remaining-req-minute', 'retry-after']) expect(exposed).toContain(header);
  });

  it('keeps CORS headers on error responses, so browsers can read the Mistral error', async () => {
    const edge = setup({ CORS_ORIGINS: 'https://app.example' });
    const response = await edge.send('/v1/models', { headers: { origin: 'https://app.example' } });
    expect(response.status).toBe(401);
    expect(response.headers.get('access-control-allow-origin')).toBe('https://app.example');
  });
});
