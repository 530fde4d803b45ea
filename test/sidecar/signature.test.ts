/**
 * The edge → sidecar trust boundary on a real sidecar started with SIROCCO_SIDECAR_SECRET: a request
 * signed by shared/signing.ts is served once; unsigned, wrongly signed, stale (> 60 s), tampered and
 * replayed ones get 401 in Mistral's format before any model work. The /health and /ready probes stay open.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MistralErrorBodySchema } from '../../shared/errors.ts';
import { signRequest } from '../../shared/signing.ts';
import { chatRequest, postChat, type SidecarProcess, startSidecarProcess } from '../support/sidecar-process.ts';

const SECRET = 'test-sidecar-secret';
let sidecar: SidecarProcess;
beforeAll(async () => {
  sidecar = await startSidecarProcess({ env: { SIROCCO_SIDECAR_SECRET: SECRET } });
});
afterAll(async () => {
  expect(await sidecar?.stop()).toBe(0);
});

const PATH = '/v1/chat/completions';
const body = JSON.stringify(chatRequest('Signed hello', { max_tokens: 2 }));

async function expectUnauthorized(response: Response, reason: RegExp) {
  expect(response.status).toBe(401);
  const error = MistralErrorBodySchema.parse(await response.json());
  expect(error.type).toBe('unauthorized');
  expect(error.message).toMatch(reason);
}

describe('signed requests', () => {
  it('serves a request signed with the shared secret', async () => {
    const headers = await signRequest({ secret: SECRET, method: 'POST', path: PATH, body });
    const response = await postChat(sidecar.url, body, { headers: { ...headers } });
    expect(response.status).toBe(200);
    expect(((await response.json()) as { object: string }).object).toBe('chat.completion');
  });

  it('serves signed GETs, the query string included in what is signed', async () => {
    const headers = await signRequest({ secret: SECRET, method: 'GET', path: '/v1/models?x=1', body: '' });
    expect((await fetch(`${sidecar.url}/v1/models?x=1`, { headers: { ...headers } })).status).toBe(200);
    await expectUnauthorized(await fetch(`${sidecar.url}/v1/models?x=2`, { headers: { ...headers } }), /mismatch/);
  });
});

describe('rejected requests', () => {
  it('rejects an unsigned request', async () => {
    await expectUnauthorized(await postChat(sidecar.url, body), /missing/);
  });

  it('rejects a signature made with another secret', async () => {
    const headers = await signRequest({ secret: 'not-the-secret', method: 'POST', path: PATH, body });
    await expectUnauthorized(await postChat(sidecar.url, body, { headers: { ...headers } }), /mismatch/);
  });

  it('rejects a stale signature (more than 60 s old) and one from the future', async () => {
    const now = Math.floor(Date.now() / 1000);
    for (const timestamp of [now - 120, now + 120]) {
      const headers = await signRequest({ secret: SECRET, method: 'POST', path: PATH, body, timestamp });
      await expectUnauthorized(await postChat(sidecar.url, body, { headers: { ...headers } }), /stale/);
    }
  });

  it('rejects a body that differs from the one signed', async () => {
    const headers = await signRequest({ secret: SECRET, method: 'POST', path: PATH, body });
    const tampered = body.replace('"max_tokens":2', '"max_tokens":3');
    await expectUnauthorized(await postChat(sidecar.url, tampered, { headers: { ...headers } }), /mismatch/);
  });

  it('protects the metrics too', async () => {
    await expectUnauthorized(await fetch(`${sidecar.url}/metrics`), /missing/);
  });
});

describe('replays', () => {
  it('serves a signed request once and answers the same signed request again with 401', async () => {
    const headers = await signRequest({ secret: SECRET, method: 'POST', path: PATH, body });
    expect((await postChat(sidecar.url, body, { headers: { ...headers } })).status).toBe(200);
    await expectUnauthorized(await postChat(sidecar.url, body, { headers: { ...headers } }), /replayed/);
  });

  it('accepts the same body signed twice (two nonces)', async () => {
    for (let i = 0; i < 2; i++) {
      const headers = await signRequest({ secret: SECRET, method: 'GET', path: '/v1/models', body: '' });
      expect((await fetch(`${sidecar.url}/v1/models`, { headers: { ...headers } })).status).toBe(200);
    }
  });

  it('rejects a missing or tampered nonce', async () => {
    const headers = await signRequest({ secret: SECRET, method: 'GET', path: '/v1/models', body: '' });
    const { 'x-sirocco-nonce': nonce, ...withoutNonce } = headers;
    await expectUnauthorized(await fetch(`${sidecar.url}/v1/models`, { headers: withoutNonce }), /missing/);
    const tampered = { ...headers, 'x-sirocco-nonce': `${nonce.slice(0, -1)}${nonce.endsWith('0') ? '1' : '0'}` };
    await expectUnauthorized(await fetch(`${sidecar.url}/v1/models`, { headers: tampered }), /mismatch/);
  });
});

describe('probes', () => {
  it('answers /health and /ready without a signature', async () => {
    expect((await fetch(`${sidecar.url}/health`)).status).toBe(200);
    expect((await fetch(`${sidecar.url}/ready`)).status).toBe(200);
  });
});
