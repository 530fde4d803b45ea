import { describe, expect, it } from 'vitest';
import { ERROR_STATUS } from '../shared/errors.ts';
import { invalidRequest, modelError, SidecarError, withoutPaths } from './errors.ts';

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

describe('publicMessage', () => {
  it('cuts absolute paths to their last part in server-side errors, and leaves request errors as they are', () => {
    expect(modelError('cannot load graph /srv/stores/mixtral/layer-0.onnx: bad proto').publicMessage).toBe(
      'cannot load graph layer-0.onnx: bad proto',
    );
    expect(modelError("store '/home/op/.cache/sirocco/demo/' has no manifest").publicMessage).toBe("store '<folder>' has no manifest");
    expect(new SidecarError('invalid_request_error', 'no route for GET /v2/nothing', { status: 404 }).publicMessage).toBe(
      'no route for GET /v2/nothing',
    );
    const explicit = new SidecarError('model_error', 'expert file /a/b/L0-E1.bin is corrupt', { publicMessage: 'expert 1 of layer 0' });
    expect(explicit).toMatchObject({ message: 'expert file /a/b/L0-E1.bin is corrupt', publicMessage: 'expert 1 of layer 0' });
  });

  it('keeps relative names, URLs and ratios', () => {
    expect(withoutPaths('see docs/expert-paging.md, http://localhost:8081/v1/models and 1/2')).toBe(
      'see docs/expert-paging.md, http://localhost:8081/v1/models and 1/2',
    );
  });
});
