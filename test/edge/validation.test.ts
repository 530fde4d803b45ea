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
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
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

/** A JSON schema nested `levels` objects deep: {"type":"object","properties":{"a":{…}}}. */
function nestedSchema(levels: number): string {
  return `${'{"type":"object","properties":{"a":'.repeat(levels)}{"type":"string"}${'}}'.repeat(levels)}`;
}

function rawChat(body: BodyInit, headers: Record<string, string> = { 'content-type': 'application/json' }) {
  return edge.send('/v1/chat/completions', { method: 'POST', headers: { authorization: `Bearer ${key}`, ...headers }, body });
}

describe('body hygiene', () => {
  const hello = '{"model":"mistral-tiny","messages":[{"role":"user","content":"Hi"}]}';

  it('answers a body that is not valid UTF-8 with 400 instead of replacing the bytes', async () => {
    const bytes = new TextEncoder().encode('{"model":"mistral-tiny","messages":[{"role":"user","content":"Hi X"}]}');
    bytes[bytes.indexOf(0x58)] = 0xff; // "X" → a byte that never occurs in UTF-8
    const response = await rawChat(bytes);
    expect(response.status).toBe(400);
    expect(await errorOf(response)).toMatchObject({
      object: 'error',
      type: 'invalid_request_error',
      message: 'Request body is not valid UTF-8',
    });
  });

  it('answers a non-JSON Content-Type with 415, accepts JSON with parameters, and reads a missing one as JSON', async () => {
    for (const contentType of ['text/plain', 'application/x-www-form-urlencoded', 'application/jsonl']) {
      const response = await rawChat(hello, { 'content-type': contentType });
      expect(response.status, contentType).toBe(415);
      expect((await errorOf(response)).message).toContain('send application/json');
    }
    expect((await rawChat(hello, { 'content-type': 'Application/JSON; charset=utf-8' })).status).toBe(200);
    // A string body gets text/plain from Request; a byte body gets no Content-Type at all.
    const withoutType = await rawChat(new TextEncoder().encode(hello), {});
    expect(withoutType.status).toBe(200);
  });

  it('refuses a 50,000-level json_schema with 400, quickly, before any recursive work', async () => {
    const deep = `${'{"a":'.repeat(50_000)}{}${'}'.repeat(50_000)}`; // compact, to stay under the 1 MiB body limit
    const body = `{"model":"mistral-tiny","temperature":0,"messages":[{"role":"user","content":"Hi"}],"response_format":{"type":"json_schema","json_schema":{"name":"deep","schema":${deep}}}}`;
    const started = Date.now();
    const response = await rawChat(body);
    expect(response.status).toBe(400);
    expect((await errorOf(response)).message).toBe('Request body is nested deeper than 64 levels');
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it('refuses a 100-level schema and accepts a 10-level one', async () => {
    const withSchema = (levels: number) =>
      `{"model":"mistral-tiny","temperature":0,"messages":[{"role":"user","content":"${crypto.randomUUID()}"}],"response_format":{"type":"json_schema","json_schema":{"name":"s","schema":${nestedSchema(levels)}}}}`;
    expect((await rawChat(withSchema(100))).status).toBe(400);
    const accepted = await rawChat(withSchema(10));
    expect(accepted.status).toBe(200);
    expect(accepted.headers.get('x-cache')).toBe('MISS');
  });

  it('refuses a JSON schema with more than 10,000 values with 400 naming the field', async () => {
    const properties = Object.fromEntries(Array.from({ length: 6_000 }, (_, i) => [`p${i}`, { type: 'string' }]));
    const response = await edge.chat(key, {
      response_format: { type: 'json_schema', json_schema: { name: 'wide', schema: { type: 'object', properties } } },
    });
    expect(response.status).toBe(400);
    expect(await errorOf(response)).toMatchObject({ param: 'response_format', message: expect.stringContaining('more than 10000 values') });
    const tools = [{ type: 'function', function: { name: 'wide', parameters: { type: 'object', properties } } }];
    expect((await errorOf(await edge.chat(key, { tools }))).param).toBe('tools');
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
