/**
 * RateLimiter: the Durable Object holding one API key's rate-limit window (one object per key,
 * addressed by `idFromName(keyHash)`).
 *
 * Exactness comes from the object being single-threaded: `admit` and `debit` read and update the
 * in-memory window without awaiting anything, so concurrent requests are decided one after another
 * and can never both take the last slot.
 *
 * Persistence is write-behind: the window is saved right after the reply goes out (one write for
 * every burst of calls, `allowUnconfirmed` so no output gate waits on it), so an evicted object
 * resumes with the same counts while no request waits for a durable write — that wait is the
 * largest cost of a Durable Object call. Only a crash in the few milliseconds between a reply and
 * its write can forget those requests; the limit then errs by at most that burst, for ≤ 60 s.
 */
import { DurableObject } from 'cloudflare:workers';
import {
  admit,
  assertValidLimits,
  debit,
  prune,
  status,
  type RateLimitDecision,
  type RateLimits,
  type RateLimitStatus,
  type WindowState,
} from './sliding-window.ts';

const STORAGE_KEY = 'window';

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
    this.save(result.state);
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
    // A macrotask: runs after this call's reply is sent, and covers every call made until then.
    setTimeout(() => {
      this.saveScheduled = false;
      void this.ctx.storage.put(STORAGE_KEY, this.window, { allowUnconfirmed: true });
    }, 0);
  }
}
