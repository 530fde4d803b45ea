/**
 * Request validation and model resolution through the whole worker app in workerd: Mistral's
 * status codes and error bodies for every kind of bad input.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { setup } from './harness.ts';

const edge = setup({ UPSTREAMS: JSON.stringify({ 'mistral-medium': { url: 'http://upstream.test', apiKeySecret: 'MISSING_SECRET' } }) });
let key: string;
beforeAll(async () => {
  key = await edge.apiKey();
});

async function errorOf(response: Response) {
  expect(response.headers.get('content-type')).toMatch(/application\/json/);
  return (await response.json()) as {
    object: string;
    message: string;
    type: string;
    param: string | null;
    code: string | null;
    detail?: unknown[];
  };
}

describe('chat request validation', () => {
  it('rejects unknown fields with 422 "Extra inputs are not permitted" and a detail entry per field', async () => {
    const response = await edge.chat(key, { safe_mode: true });
    expect(response.status).toBe(422);
    const body = await errorOf(response);
    expect(body).toMatchObject({ object: 'error', type: 'invalid_request_error', param: 'safe_mode', code: null });
    expect(body.message).toContain('Extra inputs are not permitted');
    expect(body.detail).toEqual([{ loc: ['body', 'safe_mode'], msg: 'Extra inputs are not permitted', type: 'extra_forbidden' }]);
  });

  it('rejects out-of-range sampling settings with 422 naming the field', async () => {
    for (const [field, value] of [
      ['temperature', 2],
      ['top_p', -1],
      ['max_tokens', 0],
      ['random_seed', -3],
    ] as const) {
      const response = await edge.chat(key, { [field]: value });
      expect(response.status).toBe(422);
      expect((await errorOf(response)).param).toBe(field);
    }
  });

  it('accepts the fields every official client sends (safe_prompt, stream_options, user, nulls)', async () => {
    const response = await edge.chat(key, { safe_prompt: false, stream_options: null, user: 'u', random_seed: null });
    expect(response.status).toBe(200);
  });

  it('answers malformed JSON with 400', async () => {
    const response = await edge.send('/v1/chat/completions', {
      method: 'POST',
      headers: { authorization: `Bearer ${key}` },
      body: '{"model": "mistral-tiny", ',
    });
    expect(response.status).toBe(400);
    expect((await errorOf(response)).message).toMatch(/Invalid JSON body/);
  });

  it('refuses bodies over 1 MiB with 413', async () => {
    const response = await edge.chat(key, { messages: [{ role: 'user', content: 'x'.repeat(1024 * 1024 + 1) }] });
    expect(response.status).toBe(413);
    expect((await errorOf(response)).type).toBe('payload_too_large');
  });
});

describe('model names', () => {
  it('rewrites aliases to the canonical id before forwarding', async () => {
    const response = await edge.chat(key, { model: 'open-mixtral-8x7b' });
    expect(response.status).toBe(200);
    const forwarded = edge.sidecars.sidecar('us-east').requests.concat(edge.sidecars.sidecar('eu-west').requests).at(-1);
    expect(JSON.parse(forwarded?.body ?? '{}').model).toBe('mistral-small');
  });

  it('answers unknown models and mistral-medium without an upstream with 400 invalid_model, code 1500', async () => {
    for (const model of ['mistral-large', 'mistral-small-latest']) {
      const response = await edge.chat(key, { model });
      expect(response.status).toBe(400);
      expect(await errorOf(response)).toMatchObject({
        type: 'invalid_model',
        code: '1500',
        param: 'model',
        message: `Invalid model: ${model}`,
      });
    }
  });

  it('reports an upstream route whose secret is missing as a configuration error naming it', async () => {
    const response = await edge.chat(key, { model: 'mistral-medium' });
    expect(response.status).toBe(500);
    expect((await errorOf(response)).message).toMatch(/UPSTREAMS: secret MISSING_SECRET/);
  });

  it('refuses a required tool call on a local model with 400', async () => {
    const tools = [{ type: 'function', function: { name: 'lookup', parameters: {} } }];
    const response = await edge.chat(key, { tools, tool_choice: 'any' });
    expect(response.status).toBe(400);
    expect((await errorOf(response)).param).toBe('tool_choice');
    expect((await edge.chat(key, { tools, tool_choice: 'auto' })).status).toBe(200);
  });
});
