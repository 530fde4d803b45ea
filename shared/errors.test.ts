import { describe, expect, it } from 'vitest';
import { ChatCompletionRequestSchema } from './api.ts';
import { ERROR_STATUS, errorBody, MistralErrorBodySchema, retryAfterHeaders, streamErrorFrame, validationErrorBody } from './errors.ts';

function validationError(body: unknown) {
  const result = ChatCompletionRequestSchema.safeParse(body);
  if (result.success) throw new Error('expected the body to be invalid');
  return validationErrorBody(result.error);
}

describe('errorBody', () => {
  it('builds the flat Mistral envelope', () => {
    expect(errorBody('invalid_model', 'Invalid model: x', 'model', '1500')).toEqual({
      object: 'error',
      message: 'Invalid model: x',
      type: 'invalid_model',
      param: 'model',
      code: '1500',
    });
    expect(MistralErrorBodySchema.safeParse(errorBody('unauthorized', 'Unauthorized')).success).toBe(true);
  });
});

describe('validationErrorBody', () => {
  it('says "Extra inputs are not permitted" for each unknown field, with its location', () => {
    const body = validationError({ model: 'm', messages: [{ role: 'user', content: 'x' }], foo: 1, bar: 2 });
    expect(body.object).toBe('error');
    expect(body.type).toBe('invalid_request_error');
    expect(body.message).toContain('Extra inputs are not permitted');
    expect(body.detail).toEqual([
      { loc: ['body', 'foo'], msg: 'Extra inputs are not permitted', type: 'extra_forbidden' },
      { loc: ['body', 'bar'], msg: 'Extra inputs are not permitted', type: 'extra_forbidden' },
    ]);
    expect(body.param).toBe('foo');
  });

  it('names missing fields and out-of-range values with pydantic types', () => {
    const body = validationError({ messages: [{ role: 'user', content: 'x' }], temperature: 2 });
    expect(body.detail).toContainEqual({ loc: ['body', 'model'], msg: 'Field required', type: 'missing' });
    expect(body.detail?.find((entry) => entry.loc[1] === 'temperature')?.type).toBe('less_than_equal');
    expect(body.message).toMatch(/body\.temperature/);
  });

  it('tells a wrong type from a missing field, exactly when parsed with reportInput', () => {
    const parse = (body: unknown) => {
      const result = ChatCompletionRequestSchema.safeParse(body, { reportInput: true });
      if (result.success) throw new Error('expected the body to be invalid');
      return validationErrorBody(result.error).detail;
    };
    expect(parse({ model: 'm', messages: 'hi' })).toEqual([
      { loc: ['body', 'messages'], msg: 'Invalid input: expected array, received string', type: 'array_type' },
    ]);
    expect(parse({ model: 'm', messages: [{ role: 'user' }] })).toEqual([
      { loc: ['body', 'messages', 0, 'content'], msg: 'Field required', type: 'missing' },
    ]);
  });

  it('explains what a union field accepts', () => {
    const body = validationError({ model: 'm', messages: [{ role: 'user', content: 5 }], stop: 5 });
    expect(body.detail?.map((entry) => entry.msg)).toEqual([
      'Input should be a string or a list of {"type": "text", "text": …} chunks',
      'Input should be a string or a list of strings',
    ]);
  });

  it('points into nested messages', () => {
    const body = validationError({ model: 'm', messages: [{ role: 'user' }] });
    expect(body.detail?.[0]?.loc).toEqual(['body', 'messages', 0, 'content']);
  });
});

describe('streamErrorFrame', () => {
  it('is a Mistral error body that openai-node also recognises as an error', () => {
    const frame = streamErrorFrame('upstream_error', 'sidecar went away');
    expect(MistralErrorBodySchema.safeParse(frame).success).toBe(true);
    expect(frame.error).toEqual({ message: 'sidecar went away', type: 'upstream_error', code: null });
  });
});

describe('ERROR_STATUS', () => {
  it("is the one type → status table, including the sidecar's model_error", () => {
    expect(ERROR_STATUS).toMatchObject({
      invalid_request_error: 400,
      unauthorized: 401,
      rate_limited: 429,
      internal_error: 500,
      model_error: 500,
      overloaded: 503,
    });
  });
});

describe('retryAfterHeaders', () => {
  it('sends whole seconds rounded up in Retry-After and the exact wait in retry-after-ms', () => {
    expect(retryAfterHeaders(1)).toEqual({ 'retry-after': '1', 'retry-after-ms': '1000' });
    expect(retryAfterHeaders(57.123)).toEqual({ 'retry-after': '58', 'retry-after-ms': '57123' });
    expect(retryAfterHeaders(0.001)).toEqual({ 'retry-after': '1', 'retry-after-ms': '1' });
    expect(retryAfterHeaders(0)).toEqual({ 'retry-after': '0', 'retry-after-ms': '0' });
  });

  it('caps the wait to 0…60 s', () => {
    expect(retryAfterHeaders(600)).toEqual({ 'retry-after': '60', 'retry-after-ms': '60000' });
    expect(retryAfterHeaders(Infinity)).toEqual({ 'retry-after': '60', 'retry-after-ms': '60000' });
    expect(retryAfterHeaders(-5)).toEqual({ 'retry-after': '0', 'retry-after-ms': '0' });
    expect(retryAfterHeaders(Number.NaN)).toEqual({ 'retry-after': '0', 'retry-after-ms': '0' });
  });

  it('round-trips any whole number of milliseconds in the window', () => {
    for (const ms of [1, 999, 1_000, 1_001, 55_555, 59_999, 60_000]) {
      expect(retryAfterHeaders(ms / 1000)).toEqual({ 'retry-after': String(Math.ceil(ms / 1000)), 'retry-after-ms': String(ms) });
    }
  });
});
