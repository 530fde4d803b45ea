import { describe, expect, it } from 'vitest';
import { hmacSha256Hex, sha256Hex } from './crypto.ts';
import { newNonce, signRequest, verifyRequest } from './signing.ts';

const secret = 'test-secret';
const body = JSON.stringify({ model: 'mistral-tiny', messages: [{ role: 'user', content: 'hi' }] });
const request = { secret, method: 'POST', path: '/v1/chat/completions', body };

describe('signRequest', () => {
  it('signs METHOD, path, timestamp, nonce and the body hash as the contract says', async () => {
    const nonce = '0123456789abcdef0123456789abcdef';
    const headers = await signRequest({ ...request, timestamp: 1_700_000_000, nonce });
    const canonical = `POST\n/v1/chat/completions\n1700000000\n${nonce}\n${await sha256Hex(body)}`;
    expect(headers).toEqual({
      'x-sirocco-timestamp': '1700000000',
      'x-sirocco-nonce': nonce,
      'x-sirocco-signature': await hmacSha256Hex(secret, canonical),
    });
    expect(headers['x-sirocco-signature']).toMatch(/^[0-9a-f]{64}$/);
  });

  it('sends a fresh 128-bit nonce with every signature', async () => {
    const nonces = new Set<string>();
    for (let i = 0; i < 100; i++) nonces.add((await signRequest({ ...request, timestamp: 1_700_000_000 }))['x-sirocco-nonce']);
    expect(nonces.size).toBe(100);
    for (const nonce of nonces) expect(nonce).toMatch(/^[0-9a-f]{32}$/);
    expect(newNonce()).not.toBe(newNonce());
  });

  it('refuses a nonce that could shift the signed fields', async () => {
    await expect(signRequest({ ...request, nonce: 'short' })).rejects.toThrow(/nonce/);
    await expect(signRequest({ ...request, nonce: 'abcdefghijklmnop\n1' })).rejects.toThrow(/nonce/);
  });

  it('refuses an empty secret', async () => {
    await expect(signRequest({ ...request, secret: '' })).rejects.toThrow(/secret/);
  });
});

describe('verifyRequest', () => {
  const now = 1_700_000_000;

  it('accepts its own signature from Headers or a Node header record', async () => {
    const signed = await signRequest({ ...request, timestamp: now });
    const accepted = { ok: true, timestamp: now, nonce: signed['x-sirocco-nonce'] };
    expect(await verifyRequest({ ...request, headers: new Headers(signed), nowSeconds: now + 59 })).toEqual(accepted);
    expect(await verifyRequest({ ...request, headers: { ...signed }, nowSeconds: now - 30 })).toEqual(accepted);
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
    const { 'x-sirocco-nonce': _nonce, ...withoutNonce } = signed;
    expect(await verify({ headers: withoutNonce })).toMatchObject({ ok: false, reason: expect.stringMatching(/missing/) });
    expect(await verify({ headers: { ...signed, 'x-sirocco-nonce': newNonce() } })).toMatchObject({
      ok: false,
      reason: 'signature mismatch',
    });
    expect(await verify({ headers: { ...signed, 'x-sirocco-nonce': 'a b' } })).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/malformed x-sirocco-nonce/),
    });
  });

  it('signs binary bodies the same as their text', async () => {
    const signed = await signRequest({ ...request, timestamp: now });
    const bytes = new TextEncoder().encode(body);
    expect(await verifyRequest({ ...request, body: bytes, headers: signed, nowSeconds: now })).toMatchObject({ ok: true });
  });
});
