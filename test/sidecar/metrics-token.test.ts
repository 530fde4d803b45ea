/**
 * A Prometheus scraper on a real sidecar: with SIROCCO_METRICS_TOKEN set, `/metrics` answers
 * `Authorization: Bearer <token>` without a signature; a wrong token and no token get 401 while a signing secret is
 * set, and a signed request still works. The token opens nothing else. Without a signing secret, a set token is
 * what /metrics needs.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MistralErrorBodySchema } from '../../shared/errors.ts';
import { signRequest } from '../../shared/signing.ts';
import { type SidecarProcess, startSidecarProcess } from '../support/sidecar-process.ts';

const SECRET = 'metrics-test-sidecar-secret';
const TOKEN = 'metrics-test-scrape-token-0123456789';
let sidecar: SidecarProcess;
beforeAll(async () => {
  sidecar = await startSidecarProcess({ env: { SIROCCO_SIDECAR_SECRET: SECRET, SIROCCO_METRICS_TOKEN: TOKEN } });
});
afterAll(async () => {
  expect(await sidecar?.stop()).toBe(0);
});

const metrics = (headers: Record<string, string> = {}) => fetch(`${sidecar.url}/metrics`, { headers });

async function expectUnauthorized(response: Response) {
  expect(response.status).toBe(401);
  expect(MistralErrorBodySchema.parse(await response.json()).type).toBe('unauthorized');
}

describe('/metrics with SIROCCO_METRICS_TOKEN', () => {
  it('serves Prometheus text to the bearer token', async () => {
    const response = await metrics({ authorization: `Bearer ${TOKEN}` });
    expect(response.status).toBe(200);
    expect(await response.text()).toMatch(/^# (HELP|TYPE) /m);
  });

  it('refuses a wrong token and no token', async () => {
    await expectUnauthorized(await metrics({ authorization: 'Bearer not-the-token' }));
    await expectUnauthorized(await metrics({ authorization: `Bearer ${TOKEN}x` }));
    await expectUnauthorized(await metrics());
  });

  it('still serves a signed request', async () => {
    const headers = await signRequest({ secret: SECRET, method: 'GET', path: '/metrics', body: '' });
    expect((await metrics({ ...headers })).status).toBe(200);
  });

  it('opens no other route', async () => {
    await expectUnauthorized(await fetch(`${sidecar.url}/v1/models`, { headers: { authorization: `Bearer ${TOKEN}` } }));
  });
});

describe('/metrics with SIROCCO_METRICS_TOKEN and no signing secret', () => {
  let unsigned: SidecarProcess;
  beforeAll(async () => {
    unsigned = await startSidecarProcess({ env: { SIROCCO_METRICS_TOKEN: TOKEN } });
  });
  afterAll(async () => {
    expect(await unsigned?.stop()).toBe(0);
  });

  it('needs the token', async () => {
    const scrape = (headers: Record<string, string> = {}) => fetch(`${unsigned.url}/metrics`, { headers });
    expect((await scrape({ authorization: `Bearer ${TOKEN}` })).status).toBe(200);
    await expectUnauthorized(await scrape({ authorization: 'Bearer not-the-token' }));
    await expectUnauthorized(await scrape());
  });
});
