/**
 * RateLimiter: the Durable Object holding one API key's rate-limit window (one object per key,
 * addressed by `idFromName(keyHash)`).
 *
 * Exactness comes from the object being single-threaded: `admit` and `debit` read and update the
 * in-memory window without awaiting anything, so concurrent requests are decided one after another
 * and can never both take the last slot — nor the last tokens: a request reserves its worst-case
 * tokens at admission, and the reservation is settled to the real usage (`settle`) or released
 * (`release`) when it ends.
 *
 * Reservations live in memory only: they last one request, and one whose worker died without
 * settling is dropped after RESERVATION_TTL_MS. An object evicted meanwhile (it is not, while calls
 * keep coming) forgets them, and the late settlement is then an ordinary debit.
 *
 * Persistence is write-behind: the window is saved at most once per second, after the replies
 * (`allowUnconfirmed`, so no output gate waits on it). No request waits for a durable write — the
 * largest cost of a Durable Object call — and a busy key costs one storage write per second, not
 * one per request (writes are billed, and locally each SQLite write stalls workerd for milliseconds).
 * An evicted object (evictions follow idleness, long after the pending save) resumes with the same
 * counts; only a crash can forget the requests of its last second, for at most 60 s.
 */
import { DurableObject } from 'cloudflare:workers';
import {
  admit,
  assertValidLimits,
  debit,
  prune,
  type RateLimitDecision,
  type RateLimitStatus,
  type RateLimits,
  status,
  type WindowState,
} from './sliding-window.ts';

/** What `admit` answers; an admitted request that reserved tokens gets the id to settle them with. */
export type AdmitResult = RateLimitDecision & { reservationId?: string };

type Reservation = { tokens: number; expiresAtMs: number };

const STORAGE_KEY = 'window';
/** Longest time an admitted request or debit stays unsaved. */
export const SAVE_INTERVAL_MS = 1_000;
/** Longest a reservation holds tokens without being settled or released (longer than any response). */
export const RESERVATION_TTL_MS = 15 * 60_000;

/**
 * A Durable Object's write-behind save: `schedule()` after a change, and the state `read` returns then is
 * written once, SAVE_INTERVAL_MS later, after the replies (`allowUnconfirmed`: no output gate waits on it), with
 * every change made until then.
 */
export class WriteBehind<State> {
  private scheduled = false;

  constructor(
    private readonly storage: DurableObjectStorage,
    private readonly key: string,
    private readonly read: () => State,
  ) {}

  schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setTimeout(() => {
      this.scheduled = false;
      void this.storage.put(this.key, this.read(), { allowUnconfirmed: true });
    }, SAVE_INTERVAL_MS);
  }
}

export class RateLimiter extends DurableObject {
  private window: WindowState = [];
  private readonly reservations = new Map<string, Reservation>();
  private readonly saver = new WriteBehind(this.ctx.storage, STORAGE_KEY, () => this.window);

  constructor(ctx: DurableObjectState, env: Cloudflare.Env) {
    super(ctx, env);
    void ctx.blockConcurrencyWhile(async () => {
      this.window = (await ctx.storage.get<WindowState>(STORAGE_KEY)) ?? [];
    });
  }

  /**
   * Admits one request if the key has requests and tokens left in the window, and counts it. With
   * `reservation.tokens` > 0 the request is admitted only if that many tokens (capped at the limit, so
   * a lone request always fits an empty window) fit beside the debited and reserved ones — or, with
   * `upToRemaining`, if any are left, taking at most that many — and they stay reserved under the
   * returned id until `settle` or `release`.
   */
  admit(limits: RateLimits, reservation: { tokens: number; upToRemaining?: boolean } = { tokens: 0 }): AdmitResult {
    assertValidLimits(limits);
    const now = Date.now();
    const requested = Math.min(Math.max(0, Math.ceil(reservation.tokens)), limits.tokensPerMinute);
    const hold = { inFlight: this.reservedTokens(now), requested, upToRemaining: reservation.upToRemaining };
    const result = admit(prune(this.window, now), limits, now, hold);
    if (!result.decision.allowed) return result.decision; // a rejection changes nothing worth saving
    this.save(result.state);
    if (result.reservedTokens === 0) return result.decision;
    const reservationId = crypto.randomUUID();
    this.reservations.set(reservationId, { tokens: result.reservedTokens, expiresAtMs: now + RESERVATION_TTL_MS });
    return { ...result.decision, reservationId };
  }

  /** Replaces a reservation by the tokens the request really used; returns the budget left. */
  settle(reservationId: string, tokens: number, limits: RateLimits): RateLimitStatus {
    this.reservations.delete(reservationId);
    return this.debit(tokens, limits);
  }

  /** Gives a reservation's tokens back: the request failed or its client left before any usage was known. */
  release(reservationId: string): void {
    this.reservations.delete(reservationId);
  }

  /** Charges the tokens a finished response used (prompt + completion); returns the budget left. */
  debit(tokens: number, limits: RateLimits): RateLimitStatus {
    assertValidLimits(limits);
    const now = Date.now();
    const next = debit(prune(this.window, now), tokens, now);
    this.save(next);
    return status(next, limits);
  }

  /** The budget left, without counting anything. */
  peek(limits: RateLimits): RateLimitStatus {
    assertValidLimits(limits);
    return status(prune(this.window, Date.now()), limits);
  }

  /** Tokens reserved by running requests; drops reservations past their TTL. */
  private reservedTokens(now: number): number {
    let total = 0;
    for (const [id, reservation] of this.reservations) {
      if (reservation.expiresAtMs <= now) this.reservations.delete(id);
      else total += reservation.tokens;
    }
    return total;
  }

  private save(next: WindowState): void {
    this.window = next;
    this.saver.schedule();
  }
}
