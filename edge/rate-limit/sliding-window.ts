/**
 * The rate-limit window: exact counts over a sliding 60-second window, kept as one bucket per second.
 *
 * A sliding log of every request would be exact but grows with the limit (10,000 req/min = 10,000
 * timestamps rewritten on every request). Instead each wall-clock second gets one bucket holding the
 * number of requests admitted and tokens debited in it, plus the time of the latest of them. A bucket
 * leaves the window 60 s after its latest entry, so every request and token counts for at least 60 s
 * (at most 61 s): counts are exact, the window never admits more than the limit in any rolling 60 s,
 * the state is at most 61 small buckets, and a client is never told to wait more than 60 s.
 *
 * Requests are admitted while fewer than `requestsPerMinute` were admitted and fewer than
 * `tokensPerMinute` tokens were debited in the window. Token cost is unknown until the response ends,
 * so a request may reserve its worst case at admission (`TokenHold`): it is admitted only if the
 * tokens debited, the reservations of the requests still running and its own reservation fit the
 * budget together. The reservation is settled to the real usage (`debit`) when the response ends.
 *
 * Pure functions over plain data: the Durable Object owns the state and the clock.
 */

export const WINDOW_MS = 60_000;

/** Limits of one API key. Both are positive integers. */
export type RateLimits = {
  requestsPerMinute: number;
  tokensPerMinute: number;
};

/** What one wall-clock second contributed to the window. */
export type SecondBucket = {
  second: number; // floor(epoch ms / 1000) of the entries in this bucket
  requests: number; // requests admitted in that second
  tokens: number; // tokens debited in that second
  latestMs: number; // epoch ms of the latest entry; the bucket expires at latestMs + WINDOW_MS
};

/** Buckets still inside the window, oldest first. */
export type WindowState = SecondBucket[];

/** Limits and what is left of them, as the rate-limit headers report it. */
export type RateLimitStatus = {
  limitRequests: number;
  remainingRequests: number;
  limitTokens: number;
  remainingTokens: number;
};

/**
 * The token side of one admission: tokens reserved by the key's running requests (`inFlight`), and
 * the reservation this request asks for (`requested`, 0 for none). With `upToRemaining` the request
 * takes whatever is left of the budget, up to `requested`, and needs only some of it to be left.
 */
export type TokenHold = { inFlight: number; requested: number; upToRemaining?: boolean };

const NO_HOLD: TokenHold = { inFlight: 0, requested: 0 };

/** How long a request kept out only by other requests' reservations is told to wait: they settle soon. */
export const IN_FLIGHT_RETRY_MS = 1_000;

export type RateLimitDecision = RateLimitStatus & {
  allowed: boolean;
  retryAfterMs: number; // 0 when allowed; otherwise how long until a request would be admitted (≤ 60,000)
};

/** Throws a RangeError naming the field when limits are not positive integers. */
export function assertValidLimits(limits: RateLimits): void {
  for (const field of ['requestsPerMinute', 'tokensPerMinute'] as const) {
    const value = limits[field];
    if (!Number.isSafeInteger(value) || value < 1) {
      throw new RangeError(`Rate limit ${field} must be a positive integer, got ${String(value)}`);
    }
  }
}

/** Drops buckets whose latest entry is 60 s old or more. */
export function prune(state: WindowState, nowMs: number): WindowState {
  return state.filter((bucket) => bucket.latestMs + WINDOW_MS > nowMs);
}

/** Requests and tokens counted in the window. */
export function windowTotals(state: WindowState): { requests: number; tokens: number } {
  let requests = 0;
  let tokens = 0;
  for (const bucket of state) {
    requests += bucket.requests;
    tokens += bucket.tokens;
  }
  return { requests, tokens };
}

/**
 * Limits and remaining budget of a pruned window. Reservations are left out: the figures report what
 * was spent (a reservation lasts one request and is replaced by its real usage).
 */
export function status(state: WindowState, limits: RateLimits): RateLimitStatus {
  const used = windowTotals(state);
  return {
    limitRequests: limits.requestsPerMinute,
    remainingRequests: Math.max(0, limits.requestsPerMinute - used.requests),
    limitTokens: limits.tokensPerMinute,
    remainingTokens: Math.max(0, limits.tokensPerMinute - used.tokens),
  };
}

/**
 * Decides one request against a window (already pruned at `nowMs`). When admitted, the returned
 * state counts it and `reservedTokens` is what it holds until settled. Without a reservation
 * (`hold.requested` 0) tokens block only once the debited ones reach the limit.
 */
export function admit(
  state: WindowState,
  limits: RateLimits,
  nowMs: number,
  hold: TokenHold = NO_HOLD,
): { state: WindowState; decision: RateLimitDecision; reservedTokens: number } {
  const used = windowTotals(state);
  const requestsWait = used.requests >= limits.requestsPerMinute ? waitUntilBelow(state, 'requests', limits.requestsPerMinute, nowMs) : 0;
  const tokens = tokenAdmission(state, used.tokens, limits.tokensPerMinute, hold, nowMs);
  if (requestsWait > 0 || tokens.waitMs > 0) {
    const decision = { allowed: false, retryAfterMs: Math.max(requestsWait, tokens.waitMs), ...status(state, limits) };
    return { state, decision, reservedTokens: 0 };
  }
  const next = record(state, nowMs, 1, 0);
  return { state: next, decision: { allowed: true, retryAfterMs: 0, ...status(next, limits) }, reservedTokens: tokens.reserved };
}

/** The tokens a request may reserve, or how long until it may (`waitMs` > 0). */
function tokenAdmission(
  state: WindowState,
  usedTokens: number,
  limit: number,
  hold: TokenHold,
  nowMs: number,
): { waitMs: number; reserved: number } {
  if (hold.requested === 0) return { waitMs: usedTokens >= limit ? waitUntilBelow(state, 'tokens', limit, nowMs) : 0, reserved: 0 };
  // The debited tokens must drop below `debitedBelow` for the request to fit.
  let debitedBelow: number;
  if (hold.upToRemaining) {
    const room = limit - usedTokens - hold.inFlight;
    if (room >= 1) return { waitMs: 0, reserved: Math.min(hold.requested, room) };
    debitedBelow = limit - hold.inFlight;
  } else {
    if (usedTokens < limit && usedTokens + hold.inFlight + hold.requested <= limit) return { waitMs: 0, reserved: hold.requested };
    debitedBelow = Math.min(limit, limit - hold.inFlight - hold.requested + 1);
  }
  // Nothing the window sheds can make room while running requests hold it: they settle soon.
  if (debitedBelow <= 0) return { waitMs: IN_FLIGHT_RETRY_MS, reserved: 0 };
  return { waitMs: waitUntilBelow(state, 'tokens', debitedBelow, nowMs), reserved: 0 };
}

/** Adds `tokens` used by a finished response to the window (already pruned at `nowMs`). */
export function debit(state: WindowState, tokens: number, nowMs: number): WindowState {
  if (!Number.isSafeInteger(tokens) || tokens < 0) {
    throw new RangeError(`Token debit must be a non-negative integer, got ${String(tokens)}`);
  }
  return tokens === 0 ? state : record(state, nowMs, 0, tokens);
}

function record(state: WindowState, nowMs: number, requests: number, tokens: number): WindowState {
  const second = Math.floor(nowMs / 1000);
  const last = state.at(-1);
  // Same second (or a clock that stepped back): add to the newest bucket so buckets stay ordered.
  if (last && second <= last.second) {
    const updated = {
      second: last.second,
      requests: last.requests + requests,
      tokens: last.tokens + tokens,
      latestMs: Math.max(last.latestMs, nowMs),
    };
    return [...state.slice(0, -1), updated];
  }
  return [...state, { second, requests, tokens, latestMs: nowMs }];
}

/** Milliseconds until enough of the oldest buckets expire for `field` to drop below `limit`. */
function waitUntilBelow(state: WindowState, field: 'requests' | 'tokens', limit: number, nowMs: number): number {
  let total = windowTotals(state)[field];
  // Buckets expire in order of latestMs, which grows with their position (seconds are appended in order).
  for (const bucket of state) {
    if (total < limit) break;
    total -= bucket[field];
    if (total < limit) return Math.min(WINDOW_MS, Math.max(1, bucket.latestMs + WINDOW_MS - nowMs));
  }
  return WINDOW_MS;
}
