/**
 * The signature check in-process, on a bare Hono app: a signed request is served once, a replay of
 * it is 401, and a full nonce registry refuses (503) rather than forget a nonce still in its window.
 * Expired nonces are swept so the registry stays bounded. The real process is test/sidecar/signature.test.ts.
 */
import { Hono } from 'hono';
import { describe, expect, it } from 'vitest';
import { signRequest } from '../../shared/signing.ts';
import type { SidecarEnv } from './context.ts';
import { errorResponse, toSidecarError } from './error-response.ts';
import { NonceRegistry, signatureCheck } from './signature.ts';

const SECRET = 'unit-secret';
const NOW = 1_700_000_000;

function appWith(options: { maxRememberedNonces?: number; clock: { now: number } }) {
  const app = new Hono<SidecarEnv>();
  app.onError((error, c) => errorResponse(c, toSidecarError(error)));
  app.use(signatureCheck({ secret: SECRET, maxRememberedNonces: options.maxRememberedNonces, nowSeconds: () => options.clock.now }));
  app.get('/v1/models', (c) => c.json({ ok: true }));
  return app;
}

const signedGet = async (timestamp: number, nonce?: string) =>
  signRequest({ secret: SECRET, method: 'GET', path: '/v1/models', body: '', timestamp, nonce });

describe('signatureCheck replay protection', () => {
  it('serves a signed request once and answers its replay with 401', async () => {
    const clock = { now: NOW };
    const app = appWith({ clock });
    const headers = await signedGet(NOW);
    expect((await app.request('/v1/models', { headers })).status).toBe(200);
    const replay = await app.request('/v1/models', { headers });
    expect(replay.status).toBe(401);
    expect(((await replay.json()) as { message: string }).message).toMatch(/replayed/);
    clock.now = NOW + 60;
    expect((await app.request('/v1/models', { headers })).status).toBe(401);
    clock.now = NOW + 61; // past the window the timestamp check refuses it, nonce forgotten or not
    expect(((await (await app.request('/v1/models', { headers })).json()) as { message: string }).message).toMatch(/stale/);
  });

  it('refuses new requests with 503 while full of live nonces, and accepts again once they expire', async () => {
    const clock = { now: NOW };
    const app = appWith({ maxRememberedNonces: 2, clock });
    expect((await app.request('/v1/models', { headers: await signedGet(NOW) })).status).toBe(200);
    expect((await app.request('/v1/models', { headers: await signedGet(NOW) })).status).toBe(200);
    const full = await app.request('/v1/models', { headers: await signedGet(NOW) });
    expect(full.status).toBe(503);
    expect(full.headers.get('retry-after')).toBe('1');
    clock.now = NOW + 61;
    expect((await app.request('/v1/models', { headers: await signedGet(NOW + 61) })).status).toBe(200);
  });
});

describe('NonceRegistry', () => {
  it('remembers a nonce until its timestamp leaves the window, then sweeps it', () => {
    const registry = new NonceRegistry(10, 60);
    expect(registry.accept('a', NOW, NOW)).toBe('accepted');
    expect(registry.accept('b', NOW + 30, NOW)).toBe('accepted');
    expect(registry.accept('a', NOW, NOW + 60)).toBe('replayed');
    expect(registry.accept('c', NOW + 61, NOW + 61)).toBe('accepted');
    expect(registry.size).toBe(2); // 'a' swept, 'b' (fresh until NOW + 90) and 'c' kept
    expect(registry.accept('b', NOW + 30, NOW + 90)).toBe('replayed');
  });
});
