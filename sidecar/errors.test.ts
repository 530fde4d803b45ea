import { describe, expect, it } from 'vitest';
import { ERROR_STATUS } from '../shared/errors.ts';
import { invalidRequest, modelError, SidecarError } from './errors.ts';

describe('SidecarError', () => {
  it('takes its default status from the shared error table', () => {
    for (const type of [
      'invalid_request_error',
      'invalid_model',
      'unauthorized',
      'payload_too_large',
      'rate_limited',
      'overloaded',
      'internal_error',
    ] as const) {
      expect(new SidecarError(type, 'x').status).toBe(ERROR_STATUS[type]);
    }
    expect(modelError('missing model.safetensors').status).toBe(500);
    expect(invalidRequest('bad', 'max_tokens')).toMatchObject({ status: 400, param: 'max_tokens' });
  });

  it('keeps an explicit status and the retry hint in seconds', () => {
    expect(new SidecarError('invalid_request_error', 'no route', { status: 404 }).status).toBe(404);
    expect(new SidecarError('overloaded', 'busy', { retryAfterSeconds: 2.5 }).retryAfterSeconds).toBe(2.5);
  });
});
