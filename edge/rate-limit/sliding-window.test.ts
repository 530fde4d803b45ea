/**
 * The sliding window behind the rate limiter, driven with an explicit clock: exact counts, a
 * request or token counts for 60 s after it happened, and Retry-After says when the next request fits.
 */
import { describe, expect, it } from 'vitest';
import { admit, assertValidLimits, debit, IN_FLIGHT_RETRY_MS, prune, status, WINDOW_MS, type WindowState } from './sliding-window.ts';

const limits = { requestsPerMinute: 3, tokensPerMinute: 100 };
const start = 1_700_000_000_000;

/** Admits requests at the given times, returning the decisions and the final window. */
function admitAt(times: number[], state: WindowState = []) {
  const decisions = [];
  for (const now of times) {
    const result = admit(prune(state, now), limits, now);
    state = result.state;
    decisions.push(result.decision);
  }
  return { decisions, state };
}

describe('sliding rate-limit window', () => {
  it('admits exactly requestsPerMinute requests and counts the remainder down', () => {
    const { decisions } = admitAt([start, start + 10, start + 20, start + 30]);
    expect(decisions.map((d) => d.allowed)).toEqual([true, true, true, false]);
    expect(decisions.map((d) => d.remainingRequests)).toEqual([2, 1, 0, 0]);
    expect(decisions[3]).toMatchObject({ limitRequests: 3, limitTokens: 100, remainingTokens: 100 });
  });

  it('tells a rejected client to retry when the oldest request leaves the window', () => {
    const { decisions } = admitAt([start, start + 5_000, start + 10_000, start + 20_000]);
    expect(decisions[3]).toMatchObject({ allowed: false, retryAfterMs: WINDOW_MS - 20_000 });
  });

  it('admits again once a full minute has passed since the requests, not before', () => {
    const full = admitAt([start, start + 1, start + 2]).state;
    expect(admitAt([start + WINDOW_MS + 1], full).decisions[0]?.allowed).toBe(false);
    expect(admitAt([start + WINDOW_MS + 2], full).decisions[0]).toMatchObject({ allowed: true, remainingRequests: 2 });
  });

  it('never admits more than the limit in any rolling minute, even across bucket boundaries', () => {
    // One request every 7 s for 10 minutes: whatever is admitted, no 60 s span may hold more than 3.
    const times = Array.from({ length: 90 }, (_, i) => start + i * 7_000 + 999);
    const { decisions } = admitAt(times);
    const admitted = times.filter((_, i) => decisions[i]?.allowed);
    for (const t of admitted) expect(admitted.filter((other) => other >= t && other < t + WINDOW_MS).length).toBeLessThanOrEqual(3);
    expect(admitted.length).toBeGreaterThan(20); // and it does keep admitting as the window slides
  });

  it('blocks new requests once the debited tokens reach tokensPerMinute, until they age out', () => {
    let state = admitAt([start]).state;
    state = debit(prune(state, start + 1_000), 60, start + 1_000);
    expect(status(state, limits)).toMatchObject({ remainingTokens: 40, remainingRequests: 2 });
    state = debit(prune(state, start + 2_000), 45, start + 2_000);
    const blocked = admit(prune(state, start + 3_000), limits, start + 3_000).decision;
    expect(blocked).toMatchObject({ allowed: false, remainingTokens: 0, remainingRequests: 2 });
    // Dropping the first debit (60 tokens) brings usage to 45 < 100.
    expect(blocked.retryAfterMs).toBe(start + 1_000 + WINDOW_MS - (start + 3_000));
    const later = start + 1_000 + WINDOW_MS;
    expect(admit(prune(state, later), limits, later).decision).toMatchObject({ allowed: true, remainingTokens: 55 });
  });

  it('never asks a client to wait more than 60 s', () => {
    let state = admitAt([start]).state;
    state = debit(prune(state, start), 5_000, start);
    expect(admit(prune(state, start), limits, start).decision.retryAfterMs).toBeLessThanOrEqual(WINDOW_MS);
  });

  it('rejects malformed limits and debits with a message naming the field', () => {
    expect(() => assertValidLimits({ requestsPerMinute: 0, tokensPerMinute: 10 })).toThrow(
      /requestsPerMinute must be a positive integer, got 0/,
    );
    expect(() => assertValidLimits({ requestsPerMinute: 5, tokensPerMinute: 1.5 })).toThrow(/tokensPerMinute/);
    expect(() => debit([], -1, start)).toThrow(/non-negative integer, got -1/);
  });
});

describe('token reservations', () => {
  const generous = { requestsPerMinute: 1_000, tokensPerMinute: 100 };

  it('admits a reservation only if it fits beside the debited and in-flight tokens', () => {
    const spent = debit([], 40, start);
    expect(admit(spent, generous, start, { inFlight: 30, requested: 30 })).toMatchObject({
      decision: { allowed: true },
      reservedTokens: 30,
    });
    const refused = admit(spent, generous, start + 1_000, { inFlight: 30, requested: 31 });
    expect(refused).toMatchObject({ decision: { allowed: false, remainingTokens: 60 }, reservedTokens: 0 });
    // Room appears when the 40 debited tokens leave the window, 60 s after they were spent.
    expect(refused.decision.retryAfterMs).toBe(WINDOW_MS - 1_000);
  });

  it('tells a request kept out only by running reservations to retry shortly', () => {
    expect(admit([], generous, start, { inFlight: 90, requested: 11 }).decision).toMatchObject({
      allowed: false,
      retryAfterMs: IN_FLIGHT_RETRY_MS,
    });
  });

  it('with upToRemaining, takes what is left and needs only some of it', () => {
    const spent = debit([], 40, start);
    expect(admit(spent, generous, start, { inFlight: 50, requested: 100, upToRemaining: true }).reservedTokens).toBe(10);
    expect(admit(spent, generous, start, { inFlight: 60, requested: 100, upToRemaining: true }).decision.allowed).toBe(false);
  });

  it('leaves requests without a reservation exactly as before', () => {
    const spent = debit([], 99, start);
    expect(admit(spent, generous, start).decision.allowed).toBe(true);
    expect(admit(debit(spent, 1, start), generous, start).decision.allowed).toBe(false);
  });
});
