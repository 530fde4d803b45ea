import { describe, expect, it } from 'vitest';
import { ERROR_STATUS } from '../shared/errors.ts';
import { EdgeError } from './errors.ts';

describe('EdgeError', () => {
  it('takes its default status from the shared error table', () => {
    for (const type of [
      'invalid_request_error',
      'unauthorized',
      'not_found',
      'rate_limited',
      'upstream_error',
      'overloaded',
      'timeout',
    ] as const) {
      expect(new EdgeError(type, 'x').status).toBe(ERROR_STATUS[type]);
    }
    expect(new EdgeError('invalid_request_error', 'Client closed the request', { status: 499 }).status).toBe(499);
  });

  it('carries a retry hint in seconds and the extra headers its response must send', () => {
    const error = new EdgeError('rate_limited', 'Rate limit exceeded', {
      retryAfterSeconds: 1.5,
      headers: { 'x-ratelimit-remaining-req-minute': '0' },
    });
    expect(error.retryAfterSeconds).toBe(1.5);
    expect(error.headers).toEqual({ 'x-ratelimit-remaining-req-minute': '0' });
    expect(new EdgeError('overloaded', 'busy').headers).toEqual({});
  });
});
