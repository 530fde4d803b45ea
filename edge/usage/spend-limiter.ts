/**
 * SpendLimiter: the Durable Object holding one subject's month-to-date spend and tokens — one object per API key
 * (`idFromName('key:' + keyHash)`) and one per tenant (`'tenant:' + name`). The D1 ledger is the record; this is
 * the exact running total caps are enforced against, as the RateLimiter is for per-minute budgets.
 *
 * Exactness comes from the object being single-threaded: `admit` reads and updates memory without awaiting, so
 * concurrent requests are decided one after another. A capped request reserves its worst-case cost and tokens at
 * admission; the reservation is replaced by the real figures (`settle`) or given back (`release`) when it ends.
 * A request with `max_tokens` is admitted only if its worst case fits beside what was spent and reserved, so such
 * requests never overshoot; one without (worst case: the model's whole context) is admitted while anything is
 * left and reserves at most what is left, so spend never passes the cap by more than one reservation.
 *
 * The totals reset at the UTC month boundary. Persistence is write-behind, as in the RateLimiter: the month is
 * saved at most once per SAVE_INTERVAL_MS (1 s), after the replies, so a busy key costs one storage write per
 * second rather than one per request (locally each SQLite write stalls workerd for milliseconds). Only a crash
 * can forget the settlements of its last second; the D1 ledger, the record, still has them. Reservations live
 * in memory for one request and expire after RESERVATION_TTL_MS.
 */
import { DurableObject } from 'cloudflare:workers';
import { RESERVATION_TTL_MS, WriteBehind } from '../rate-limit/rate-limiter.ts';
import { monthOf, nextMonthStartMs } from './month.ts';

/** A subject's monthly caps; null = none. */
export type SpendCaps = { spendMicros: number | null; tokens: number | null };

/** A request's worst case; `upToRemaining`: no max_tokens, so admitted while anything is left. */
export type SpendReservation = { micros: number; tokens: number; upToRemaining: boolean };

export type MonthToDate = { month: string; spentMicros: number; tokens: number; lastUsedMs: number | null };

export type SpendAdmission =
  | { allowed: true; reservationId: string }
  | { allowed: false; cap: 'spend' | 'tokens'; limit: number; resetsAtMs: number };

const STORAGE_KEY = 'month';

export class SpendLimiter extends DurableObject {
  private state: MonthToDate = { month: monthOf(Date.now()), spentMicros: 0, tokens: 0, lastUsedMs: null };
  private readonly reservations = new Map<string, SpendReservation & { expiresAtMs: number }>();
  private readonly saver = new WriteBehind(this.ctx.storage, STORAGE_KEY, () => this.state);

  constructor(ctx: DurableObjectState, env: Cloudflare.Env) {
    super(ctx, env);
    void ctx.blockConcurrencyWhile(async () => {
      const stored = await ctx.storage.get<MonthToDate>(STORAGE_KEY);
      if (stored) this.state = stored;
    });
  }

  /** Admits a request if its worst case fits the caps beside what was spent and reserved, and reserves it. */
  admit(caps: SpendCaps, worst: SpendReservation): SpendAdmission {
    const now = Date.now();
    const current = this.current(now);
    const inFlight = this.inFlight(now);
    const spend = reservable(caps.spendMicros, current.spentMicros, inFlight.micros, worst.micros, worst.upToRemaining);
    const tokens = reservable(caps.tokens, current.tokens, inFlight.tokens, worst.tokens, worst.upToRemaining);
    if (spend === null) return { allowed: false, cap: 'spend', limit: caps.spendMicros ?? 0, resetsAtMs: nextMonthStartMs(now) };
    if (tokens === null) return { allowed: false, cap: 'tokens', limit: caps.tokens ?? 0, resetsAtMs: nextMonthStartMs(now) };
    const reservationId = crypto.randomUUID();
    this.reservations.set(reservationId, {
      micros: spend,
      tokens,
      upToRemaining: worst.upToRemaining,
      expiresAtMs: now + RESERVATION_TTL_MS,
    });
    return { allowed: true, reservationId };
  }

  /** Adds a finished request's real cost and tokens (replacing its reservation, if it had one). */
  settle(reservationId: string | null, micros: number, tokens: number): MonthToDate {
    if (reservationId) this.reservations.delete(reservationId);
    const now = Date.now();
    const current = this.current(now);
    this.state = { ...current, spentMicros: current.spentMicros + micros, tokens: current.tokens + tokens, lastUsedMs: now };
    this.saver.schedule();
    return this.state;
  }

  /** Gives a reservation back: the request failed, or was answered before any usage was known. */
  release(reservationId: string): void {
    this.reservations.delete(reservationId);
  }

  /** Month to date, without counting anything. */
  peek(): MonthToDate {
    return this.current(Date.now());
  }

  /** The state for the current UTC month: a new month starts from zero (the last use is kept). */
  private current(now: number): MonthToDate {
    const month = monthOf(now);
    if (this.state.month !== month) this.state = { month, spentMicros: 0, tokens: 0, lastUsedMs: this.state.lastUsedMs };
    return this.state;
  }

  private inFlight(now: number): { micros: number; tokens: number } {
    let micros = 0;
    let tokens = 0;
    for (const [id, reservation] of this.reservations) {
      if (reservation.expiresAtMs <= now) this.reservations.delete(id);
      else {
        micros += reservation.micros;
        tokens += reservation.tokens;
      }
    }
    return { micros, tokens };
  }
}

/**
 * What a request reserves against one cap, or null when it does not fit: without a cap, its worst case; with
 * `upToRemaining`, whatever is left up to its worst case, if anything is; otherwise its worst case if it fits.
 */
function reservable(cap: number | null, used: number, inFlight: number, worst: number, upToRemaining: boolean): number | null {
  if (cap === null) return worst;
  const room = cap - used - inFlight;
  if (upToRemaining) return room >= 1 ? Math.min(worst, room) : null;
  return used < cap && worst <= room ? worst : null;
}
