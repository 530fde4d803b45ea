/**
 * RateLimiter: the Durable Object holding one API key's rate-limit window (one object per key,
 * addressed by `idFromName(keyHash)`).
 *
 * Exactness comes from the object being single-threaded: `admit` and `debit` read and update the
 * in-memory window without awaiting anything, so concurrent requests are decided one after another
 * and can never both take the last slot.
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

const STORAGE_KEY = 'window';
/** Longest time an admitted request or debit stays unsaved. */
export const SAVE_INTERVAL_MS = 1_000;

export class RateLimiter extends DurableObject {
  private window: WindowState = [];
  private saveScheduled = false;

  constructor(ctx: DurableObjectState, env: Cloudflare.Env) {
    super(ctx, env);
    void ctx.blockConcurrencyWhile(async () => {
      this.window = (await ctx.storage.get<WindowState>(STORAGE_KEY)) ?? [];
    });
  }

  /** Admits one request if the key has requests and tokens left in the window, and counts it. */
  admit(limits: RateLimits): RateLimitDecision {
    assertValidLimits(limits);
    const now = Date.now();
    const result = admit(prune(this.window, now), limits, now);
    if (result.decision.allowed) this.save(result.state); // a rejection changes nothing worth saving
    return result.decision;
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

  private save(next: WindowState): void {
    this.window = next;
    if (this.saveScheduled) return;
    this.saveScheduled = true;
    // Runs after this call's reply is sent and saves every call made until then.
    setTimeout(() => {
      this.saveScheduled = false;
      void this.ctx.storage.put(STORAGE_KEY, this.window, { allowUnconfirmed: true });
    }, SAVE_INTERVAL_MS);
  }
}
