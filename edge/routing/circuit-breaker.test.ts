import { describe, expect, it } from 'vitest';
import { CircuitBreaker } from './circuit-breaker.ts';

describe('CircuitBreaker', () => {
  const options = { failureThreshold: 3, cooldownMs: 1000 };

  it('stays closed below the failure threshold and resets on success', () => {
    const breaker = new CircuitBreaker(options);
    breaker.recordFailure(0);
    breaker.recordFailure(0);
    breaker.recordSuccess();
    breaker.recordFailure(0);
    breaker.recordFailure(0);
    expect(breaker.state(0)).toBe('closed');
    expect(breaker.tryAcquire(0)).toBe(true);
  });

  it('opens after consecutive failures and rejects until the cooldown ends', () => {
    const breaker = new CircuitBreaker(options);
    for (let i = 0; i < 3; i++) breaker.recordFailure(100);
    expect(breaker.state(100)).toBe('open');
    expect(breaker.tryAcquire(1099)).toBe(false);
    expect(breaker.isAvailable(1099)).toBe(false);
  });

  it('lets exactly one trial through when half-open; success closes it', () => {
    const breaker = new CircuitBreaker(options);
    for (let i = 0; i < 3; i++) breaker.recordFailure(0);
    expect(breaker.state(1000)).toBe('half-open');
    expect(breaker.tryAcquire(1000)).toBe(true);
    expect(breaker.tryAcquire(1000)).toBe(false);
    breaker.recordSuccess();
    expect(breaker.state(1000)).toBe('closed');
  });

  it('reopens when the half-open trial fails, for a fresh cooldown', () => {
    const breaker = new CircuitBreaker(options);
    for (let i = 0; i < 3; i++) breaker.recordFailure(0);
    expect(breaker.tryAcquire(1500)).toBe(true);
    breaker.recordFailure(1500);
    expect(breaker.state(2000)).toBe('open');
    expect(breaker.state(2500)).toBe('half-open');
  });

  it('frees the trial when it ends without a verdict', () => {
    const breaker = new CircuitBreaker(options);
    for (let i = 0; i < 3; i++) breaker.recordFailure(0);
    expect(breaker.tryAcquire(1000)).toBe(true);
    breaker.release();
    expect(breaker.tryAcquire(1000)).toBe(true);
  });

  it('opens on lighter failures only once their weights add up to the threshold', () => {
    const breaker = new CircuitBreaker(options);
    for (let i = 0; i < 11; i++) breaker.recordFailure(0, 0.25);
    expect(breaker.state(0)).toBe('closed');
    breaker.recordFailure(0, 0.25);
    expect(breaker.state(0)).toBe('open');
  });
});
