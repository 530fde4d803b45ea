import { describe, expect, it } from 'vitest';
import { hmacSha256Hex, sha256Hex } from './crypto.ts';
import { signRequest, verifyRequest } from './signing.ts';

const secret = 'test-secret';
const body = JSON.stringify({ model: 'mistral-tiny', messages: [{ role: 'user', content: 'hi' }] });
const request = { secret, method: 'POST', path: '/v1/chat/completions', body };

describe('signRequest', () => {
  it('signs METHOD, path, timestamp and the body hash as the contract says', async () => {
    const headers = await signRequest({ ...request, timestamp: 1_700_000_000 });
    const canonical = `POST\n/v1/chat/completions\n1700000000\n${await sha256Hex(body)}`;
    expect(headers).toEqual({
      'x-sirocco-timestamp': '1700000000',
      'x-sirocco-signature': await hmacSha256Hex(secret, canonical),
    });
    expect(headers['x-sirocco-signature']).toMatch(/^[0-9a-f]{64}$/);
  });

  it('refuses an empty secret', async () => {
    await expect(signRequest({ ...request, secret: '' })).rejects.toThrow(/secret/);
  });
});

describe('verifyRequest', () => {
  const now = 1_700_000_000;

  it('accepts its own signature from Headers or a Node header record', async () => {
    const signed = await signRequest({ ...request, timestamp: now });
    expect(await verifyRequest({ ...request, headers: new Headers(signed), nowSeconds: now + 59 })).toEqual({ ok: true });
    expect(await verifyRequest({ ...request, headers: { ...signed }, nowSeconds: now - 30 })).toEqual({ ok: true });
  });

  it('rejects missing headers, stale timestamps, wrong secrets and tampering', async () => {
    const signed = await signRequest({ ...request, timestamp: now });
    const verify = (patch: Partial<Parameters<typeof verifyRequest>[0]>) =>
      verifyRequest({ ...request, headers: signed, nowSeconds: now, ...patch });

    expect(await verify({ headers: {} })).toMatchObject({ ok: false, reason: expect.stringMatching(/missing/) });
    expect(await verify({ nowSeconds: now + 61 })).toMatchObject({ ok: false, reason: expect.stringMatching(/stale/) });
    expect(await verify({ secret: 'other' })).toMatchObject({ ok: false, reason: 'signature mismatch' });
    expect(await verify({ body: body.replace('hi', 'ho') })).toMatchObject({ ok: false, reason: 'signature mismatch' });
    expect(await verify({ path: '/v1/models' })).toMatchObject({ ok: false, reason: 'signature mismatch' });
    expect(await verify({ method: 'GET' })).toMatchObject({ ok: false });
    expect(await verify({ headers: { ...signed, 'x-sirocco-timestamp': 'soon' } })).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/malformed/),
    });
  });

  it('signs binary bodies the same as their text', async () => {
    const signed = await signRequest({ ...request, timestamp: now });
    const bytes = new TextEncoder().encode(body);
    expect(await verifyRequest({ ...request, body: bytes, headers: signed, nowSeconds: now })).toEqual({ ok: true });
  });
});
