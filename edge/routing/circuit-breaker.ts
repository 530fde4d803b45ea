/**
 * A per-sidecar circuit breaker. Closed: requests flow, consecutive failures are counted. After
 * `failureThreshold` failures it opens: the sidecar is skipped for `cooldownMs`. Then it is
 * half-open: exactly one trial request goes through; success closes it, failure opens it again.
 * A failure may weigh less than one (an overloaded sidecar's 429/503, see failover.ts), so that
 * kind opens the circuit only after several times as many answers in a row.
 */

export type CircuitState = 'closed' | 'open' | 'half-open';

export interface CircuitBreakerOptions {
  failureThreshold: number;
  cooldownMs: number;
}

export class CircuitBreaker {
  #failures = 0;
  #openedAt: number | null = null;
  #trialInFlight = false;

  constructor(private options: CircuitBreakerOptions) {}

  /** Thresholds come from vars and may change between requests (tests, redeploys). */
  configure(options: CircuitBreakerOptions): void {
    this.options = options;
  }

  state(now: number): CircuitState {
    if (this.#openedAt === null) return 'closed';
    return now - this.#openedAt >= this.options.cooldownMs ? 'half-open' : 'open';
  }

  /** Whether a request may go to this sidecar now; claims the single half-open trial. */
  tryAcquire(now: number): boolean {
    const state = this.state(now);
    if (state === 'closed') return true;
    if (state === 'open' || this.#trialInFlight) return false;
    this.#trialInFlight = true;
    return true;
  }

  /** Whether `tryAcquire` would succeed, without claiming anything (for ranking). */
  isAvailable(now: number): boolean {
    const state = this.state(now);
    return state === 'closed' || (state === 'half-open' && !this.#trialInFlight);
  }

  recordSuccess(): void {
    this.#failures = 0;
    this.#openedAt = null;
    this.#trialInFlight = false;
  }

  /** `weight` is how much of a failure this one is: 1 for a crash, less for an overload answer. */
  recordFailure(now: number, weight = 1): void {
    this.#failures += weight;
    this.#trialInFlight = false;
    if (this.#openedAt !== null || this.#failures >= this.options.failureThreshold) this.#openedAt = now;
  }

  /** Releases a half-open trial that ended without a verdict (e.g. the client went away). */
  release(): void {
    this.#trialInFlight = false;
  }
}
