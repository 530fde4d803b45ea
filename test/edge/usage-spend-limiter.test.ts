/**
 * The SpendLimiter Durable Object itself: its month survives an eviction, a new UTC month starts from zero, and
 * reservations decide admissions exactly.
 */
import { abortAllDurableObjects, runInDurableObject } from 'cloudflare:test';
import { env } from 'cloudflare:workers';
import { describe, expect, it } from 'vitest';
import type { MonthToDate, SpendLimiter } from '../../edge/usage/index.ts';

function limiter(name: string): DurableObjectStub<SpendLimiter> {
  return env.SPEND_LIMITER.get(env.SPEND_LIMITER.idFromName(name));
}

async function stored(stub: DurableObjectStub<SpendLimiter>): Promise<MonthToDate | undefined> {
  return runInDurableObject(stub, (_instance, state) => state.storage.get<MonthToDate>('month'));
}

describe('SpendLimiter', () => {
  it('keeps the month to date across an eviction once saved', async () => {
    const stub = limiter('key:persisted');
    await stub.settle(null, 1_234, 56);
    await stub.settle(null, 1, 2);
    // Write-behind: saved within a second of the settlements.
    for (let attempt = 0; attempt < 50 && (await stored(stub))?.spentMicros !== 1_235; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await abortAllDurableObjects();
    const month = await limiter('key:persisted').peek();
    expect(month).toMatchObject({ month: new Date().toISOString().slice(0, 7), spentMicros: 1_235, tokens: 58 });
    expect(month.lastUsedMs).toBeGreaterThan(0);
  });

  it('starts a new UTC month from zero, keeping the last use', async () => {
    const stub = limiter('key:last-month');
    await runInDurableObject(stub, (_instance, state) =>
      state.storage.put('month', { month: '2000-01', spentMicros: 999, tokens: 99, lastUsedMs: 946_684_800_000 }),
    );
    await abortAllDurableObjects();
    expect(await limiter('key:last-month').peek()).toEqual({
      month: new Date().toISOString().slice(0, 7),
      spentMicros: 0,
      tokens: 0,
      lastUsedMs: 946_684_800_000,
    });
  });

  it('admits while worst cases fit beside spend and reservations, and frees a released reservation', async () => {
    const stub = limiter('key:admission');
    const caps = { spendMicros: 100, tokens: null };
    const first = await stub.admit(caps, { micros: 60, tokens: 10, upToRemaining: false });
    expect(first.allowed).toBe(true);
    const second = await stub.admit(caps, { micros: 60, tokens: 10, upToRemaining: false });
    expect(second).toMatchObject({ allowed: false, cap: 'spend', limit: 100 });
    // Without max_tokens: admitted while anything is left, holding at most what is left (40).
    const open = await stub.admit(caps, { micros: 1_000, tokens: 10, upToRemaining: true });
    expect(open.allowed).toBe(true);
    expect((await stub.admit(caps, { micros: 1, tokens: 1, upToRemaining: true })).allowed).toBe(false);
    if (first.allowed) await stub.release(first.reservationId);
    if (open.allowed) await stub.settle(open.reservationId, 30, 10);
    // 30 spent, nothing reserved: 70 left.
    expect((await stub.admit(caps, { micros: 71, tokens: 1, upToRemaining: false })).allowed).toBe(false);
    expect((await stub.admit(caps, { micros: 70, tokens: 1, upToRemaining: false })).allowed).toBe(true);
  });
});
