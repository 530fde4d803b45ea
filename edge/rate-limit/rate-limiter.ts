/**
 * RateLimiter: the Durable Object holding one API key's rate-limit window (one object per key,
 * addressed by `idFromName(keyHash)`).
 *
 * Exactness comes from the object being single-threaded: `admit` and `debit` read and update the
 * in-memory window without awaiting anything, so concurrent requests are decided one after another
 * and can never both take the last slot. The window is written to storage without awaiting; the
 * runtime's output gate holds each reply until that write is durable, so an evicted or restarted
 * object resumes with the same counts.
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
    void this.ctx.storage.put(STORAGE_KEY, next);
  }
}
