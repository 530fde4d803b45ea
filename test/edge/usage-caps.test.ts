/**
 * Monthly spend and token caps through the whole worker in workerd: each capped request reserves its worst case in
 * the key's (or tenant's) SpendLimiter at admission and settles to its real cost, so concurrent requests stop at
 * the cap.
 */
import { describe, expect, it } from 'vitest';
import { ADMIN_SECRET, PARIS, setup } from './harness.ts';

type Edge = ReturnType<typeof setup>;
type KeyRow = {
  id: string;
  tenant: string;
  spend_month_micros: number;
  last_used_at: number | null;
  spend_cap_month_micros: number | null;
};

async function admin<T>(edge: Edge, method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
  const response = await edge.send(path, {
    method,
    headers: { authorization: `Bearer ${ADMIN_SECRET}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: response.status, body: (await response.json()) as T };
}

async function keyRow(edge: Edge, tenant: string): Promise<KeyRow> {
  const { body } = await admin<{ data: KeyRow[] }>(edge, 'GET', '/admin/keys');
  const row = body.data.find((candidate) => candidate.tenant === tenant);
  if (!row) throw new Error(`no key for tenant ${tenant}`);
  return row;
}

/** Sends `count` requests at once and waits for all of them, bodies and background work included. */
async function burst(edge: Edge, key: string, count: number, body: Record<string, unknown>): Promise<Response[]> {
  const responses = await Promise.all(Array.from({ length: count }, () => edge.chat(key, body, { cf: PARIS })));
  for (const response of responses) {
    await response.text();
    await response.settled();
  }
  return responses;
}

// mistral-tiny at 0.14/0.42 € per million: the fake sidecar's 5 + 3 tokens cost 1.96 → 2 µ€. A request with
// max_tokens 10 and "Hi" reserves (11 + 10) tokens at the dearer 0.42: 8.82 → 9 µ€.
const REAL_COST = 2;
const RESERVATION = 9;

describe('monthly spend caps', () => {
  it('stops a key at its cap under 50 concurrent requests: spend never passes cap + one reservation', async () => {
    const edge = setup({}, { realMetering: true });
    const cap = 60;
    const key = await edge.apiKey({ tenant: 'capped-key', rpm: 10_000, spend_cap_month_micros: cap });
    for (const region of ['eu-west', 'us-east'] as const) edge.sidecars.sidecar(region).startDelayMs = 50; // all 50 in flight together

    let admitted = 0;
    const refusals: Response[] = [];
    for (let round = 0; round < 10; round++) {
      const responses = await burst(edge, key, 50, { max_tokens: 10 });
      const ok = responses.filter((response) => response.status === 200).length;
      admitted += ok;
      refusals.push(...responses.filter((response) => response.status === 429));
      const spent = (await keyRow(edge, 'capped-key')).spend_month_micros;
      expect(spent).toBe(admitted * REAL_COST);
      expect(spent).toBeLessThanOrEqual(cap + RESERVATION);
      if (ok === 0) break;
    }
    // Every admission left room for the reservations in flight: at most 60 / 9 = 6 at once, and the last ones
    // are admitted only while 9 µ€ still fit beside the 2 µ€ each finished request spent.
    expect(admitted).toBe(Math.floor((cap - RESERVATION) / REAL_COST) + 1);
    const row = await keyRow(edge, 'capped-key');
    expect(row.spend_month_micros).toBeGreaterThan(cap - RESERVATION);
    expect(row.spend_cap_month_micros).toBe(cap);
    expect(row.last_used_at).toBeGreaterThan(0);

    const refusal = refusals[0] as Response;
    expect(refusal.headers.get('retry-after')).toMatch(/^\d+$/);
    const nextMonth = new Date(Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth() + 1, 1)).toISOString().replace('.000Z', 'Z');
    expect(edge.usageEvents).toHaveLength(admitted); // refusals write nothing
    const again = await edge.chat(key, { max_tokens: 10 }, { cf: PARIS });
    expect(again.status).toBe(429);
    expect(await again.json()).toEqual({
      object: 'error',
      type: 'rate_limited',
      code: 'spend_cap_exceeded',
      param: null,
      message: `Monthly spend cap of 0.000060 EUR for key ${row.id} reached; it resets at ${nextMonth}`,
    });
  });

  it('caps a tenant across its keys, and lifts the cap when it is cleared', async () => {
    const edge = setup({}, { realMetering: true });
    const first = await edge.apiKey({ tenant: 'capped-tenant', rpm: 10_000 });
    const second = await edge.apiKey({ tenant: 'capped-tenant', rpm: 10_000 });
    const set = await admin<{ spend_cap_month_micros: number }>(edge, 'PUT', '/admin/tenants/capped-tenant/caps', {
      spend_cap_month_micros: 20,
      token_cap_month: null,
    });
    expect(set.status).toBe(200);

    const responses = [...(await burst(edge, first, 25, { max_tokens: 10 })), ...(await burst(edge, second, 25, { max_tokens: 10 }))];
    const admitted = responses.filter((response) => response.status === 200).length;
    const { body } = await admin<{ data: { tenant: string; spend_month_micros: number; spend_cap_month_micros: number | null }[] }>(
      edge,
      'GET',
      '/admin/tenants',
    );
    const tenant = body.data.find((row) => row.tenant === 'capped-tenant');
    expect(tenant?.spend_cap_month_micros).toBe(20);
    expect(tenant?.spend_month_micros).toBe(admitted * REAL_COST);
    expect(tenant?.spend_month_micros).toBeLessThanOrEqual(20 + RESERVATION);
    const refused = responses.find((response) => response.status === 429);
    expect(refused).toBeDefined();

    await admin(edge, 'PUT', '/admin/tenants/capped-tenant/caps', { spend_cap_month_micros: null, token_cap_month: null });
    const lifted = await edge.chat(second, { max_tokens: 10 }, { cf: PARIS });
    expect(lifted.status).toBe(200);
    await lifted.text();
    await lifted.settled();
  });

  it('applies a token cap set through PATCH /admin/keys/:id, with its own code', async () => {
    const edge = setup({}, { realMetering: true });
    const key = await edge.apiKey({ tenant: 'token-capped', rpm: 10_000 });
    const { id } = await keyRow(edge, 'token-capped');
    const patched = await admin<{ token_cap_month: number; rpm: number }>(edge, 'PATCH', `/admin/keys/${id}`, {
      token_cap_month: 30,
      rpm: 500,
    });
    expect(patched.status).toBe(200);
    expect(patched.body).toMatchObject({ token_cap_month: 30, rpm: 500 });

    const responses = await burst(edge, key, 10, { max_tokens: 10 }); // 21 tokens reserved each, 8 used
    const admitted = responses.filter((response) => response.status === 200).length;
    expect(admitted).toBeGreaterThanOrEqual(1);
    expect(admitted * 8).toBeLessThanOrEqual(30 + 21);
    const refused = responses.find((response) => response.status === 429);
    expect(refused).toBeDefined();

    const bad = await admin<{ type: string }>(edge, 'PATCH', `/admin/keys/${id}`, { token_cap_month: -1 });
    expect(bad.status).toBe(422);
    const missing = await admin<{ type: string }>(edge, 'PATCH', '/admin/keys/0123456789abcdef', { rpm: 5 });
    expect(missing.status).toBe(404);
  });
});
