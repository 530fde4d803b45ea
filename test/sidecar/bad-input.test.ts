/**
 * Bad input of every kind gets a 4xx in Mistral's error format — malformed JSON, wrong types,
 * unknown fields, huge bodies (with and without Content-Length), invalid UTF-8, prompts and
 * max_tokens beyond the context, unknown models, tool calls the local models cannot make — and the
 * sidecar keeps serving afterwards.
 */
import { request as httpRequest } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MistralErrorBodySchema } from '../../shared/errors.ts';
import { chatRequest, postChat, type SidecarProcess, startSidecarProcess } from '../support/sidecar-process.ts';

const MAX_BODY_BYTES = 256 * 1024;
let sidecar: SidecarProcess;
beforeAll(async () => {
  sidecar = await startSidecarProcess({ env: { SIROCCO_MAX_BODY_BYTES: String(MAX_BODY_BYTES) } });
});
afterAll(async () => {
  expect(await sidecar?.stop()).toBe(0);
});

async function expectError(response: Response, status: number, type: string) {
  expect(response.status).toBe(status);
  expect(response.headers.get('content-type')).toContain('application/json');
  const body = MistralErrorBodySchema.parse(await response.json());
  expect(body.type).toBe(type);
  expect(body.message.length).toBeGreaterThan(0);
  return body;
}

describe('malformed bodies', () => {
  it('rejects malformed JSON with 400', async () => {
    const body = await expectError(await postChat(sidecar.url, '{"model": "mistral-tiny", "messages": ['), 400, 'invalid_request_error');
    expect(body.message).toMatch(/not valid JSON/);
  });

  it('rejects invalid UTF-8 with 400', async () => {
    const bytes = new Uint8Array([
      ...new TextEncoder().encode('{"model":"mistral-tiny","messages":[{"role":"user","content":"'),
      0xff,
      0xfe,
      ...new TextEncoder().encode('"}]}'),
    ]);
    const body = await expectError(await postChat(sidecar.url, bytes), 400, 'invalid_request_error');
    expect(body.message).toMatch(/UTF-8/);
  });

  it('rejects an empty body and a JSON array', async () => {
    await expectError(await postChat(sidecar.url, ''), 400, 'invalid_request_error');
    await expectError(await postChat(sidecar.url, '[]'), 422, 'invalid_request_error');
  });
});

describe('schema violations (422 with detail[])', () => {
  it('names a wrong type', async () => {
    const response = await postChat(sidecar.url, chatRequest('Hi', { max_tokens: 'ten' }));
    const body = await expectError(response, 422, 'invalid_request_error');
    expect(body.param).toBe('max_tokens');
    expect(body.detail).toEqual([expect.objectContaining({ loc: ['body', 'max_tokens'] })]);
    expect((body.detail as Array<{ type: string }>)[0]!.type).not.toBe('missing');
  });

  it('names a missing field, an out-of-range value and an unknown field', async () => {
    const missing = await expectError(await postChat(sidecar.url, { model: 'mistral-tiny' }), 422, 'invalid_request_error');
    expect(missing.detail).toEqual([{ loc: ['body', 'messages'], msg: 'Field required', type: 'missing' }]);
    const range = await expectError(await postChat(sidecar.url, chatRequest('Hi', { temperature: 9 })), 422, 'invalid_request_error');
    expect(range.param).toBe('temperature');
    const extra = await expectError(await postChat(sidecar.url, chatRequest('Hi', { frobnicate: true })), 422, 'invalid_request_error');
    expect(extra.detail).toEqual([expect.objectContaining({ loc: ['body', 'frobnicate'], type: 'extra_forbidden' })]);
  });

  it('rejects a conversation that does not end with a user turn', async () => {
    const response = await postChat(sidecar.url, { model: 'mistral-tiny', messages: [{ role: 'assistant', content: 'Hello' }] });
    await expectError(response, 400, 'invalid_request_error');
  });
});

describe('limits', () => {
  it('answers 413 to a body over the limit announced by Content-Length', async () => {
    const huge = JSON.stringify(chatRequest('x'.repeat(MAX_BODY_BYTES + 10)));
    await expectError(await postChat(sidecar.url, huge), 413, 'payload_too_large');
  });

  it('answers 413 to a chunked body (no Content-Length) as soon as it grows past the limit', async () => {
    // A raw node:http client, because fetch reports the server closing mid-upload as a network error
    // instead of handing over the 413 that came first.
    const { status, body } = await new Promise<{ status: number; body: string }>((resolveResponse, reject) => {
      const request = httpRequest(`${sidecar.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
      });
      let answered = false;
      request.on('response', (response) => {
        answered = true;
        let text = '';
        response.on('data', (chunk: Buffer) => (text += chunk.toString()));
        response.on('end', () => resolveResponse({ status: response.statusCode ?? 0, body: text }));
      });
      request.on('error', (error) => {
        if (!answered) reject(error);
      });
      request.write('{"model":"mistral-tiny","messages":[{"role":"user","content":"');
      const piece = 'x'.repeat(64 * 1024);
      let sent = 0;
      const pump = () => {
        if (answered || sent > MAX_BODY_BYTES * 4) return void request.end();
        request.write(piece);
        sent += piece.length;
        setTimeout(pump, 5);
      };
      pump();
    });
    expect(status).toBe(413);
    expect(MistralErrorBodySchema.parse(JSON.parse(body)).type).toBe('payload_too_large');
  });

  it('answers 400 when the prompt alone fills the context window', async () => {
    // ~2 tokens per repetition: far beyond the demo model's 8192-token context, well under the body limit.
    const body = await expectError(await postChat(sidecar.url, chatRequest('hello world '.repeat(4500))), 400, 'invalid_request_error');
    expect(body.param).toBe('messages');
    expect(body.message).toMatch(/context length is 8192/);
  });

  it('answers 400 when prompt + max_tokens exceeds the context', async () => {
    const body = await expectError(await postChat(sidecar.url, chatRequest('Hi', { max_tokens: 10_000 })), 400, 'invalid_request_error');
    expect(body.param).toBe('max_tokens');
    expect(body.message).toMatch(/exceeds the model's context length of 8192/);
  });
});

describe('models and features the sidecar does not serve', () => {
  it.each(['mistral-medium', 'mistral-medium-latest', 'mistral-small-latest', 'gpt-4'])(
    'rejects model %s with 400 invalid_model',
    async (model) => {
      const body = await expectError(await postChat(sidecar.url, { ...chatRequest('Hi'), model }), 400, 'invalid_model');
      expect(body).toMatchObject({ param: 'model', code: '1500' });
    },
  );

  it('rejects tool messages and required tool calls with 400', async () => {
    const toolMessage = {
      model: 'mistral-tiny',
      messages: [
        { role: 'user', content: 'Hi' },
        { role: 'tool', content: '42', tool_call_id: 'a' },
      ],
    };
    await expectError(await postChat(sidecar.url, toolMessage), 400, 'invalid_request_error');
    const tools = [{ type: 'function', function: { name: 'add', parameters: { type: 'object' } } }];
    const required = await expectError(
      await postChat(sidecar.url, chatRequest('Hi', { tools, tool_choice: 'any' })),
      400,
      'invalid_request_error',
    );
    expect(required.param).toBe('tool_choice');
  });

  it('answers 404 in Mistral format to unknown routes and methods', async () => {
    await expectError(await fetch(`${sidecar.url}/v2/nothing`), 404, 'invalid_request_error');
    await expectError(await fetch(`${sidecar.url}/v1/chat/completions`), 404, 'invalid_request_error');
  });
});

describe('after all that', () => {
  it('is still alive and serving', async () => {
    expect(sidecar.child.exitCode).toBeNull();
    const response = await postChat(sidecar.url, chatRequest('Still there?', { max_tokens: 3 }));
    expect(response.status).toBe(200);
    const metrics = await (await fetch(`${sidecar.url}/metrics`)).text();
    expect(metrics).toMatch(/sirocco_requests_total\{route="\/v1\/chat\/completions",status="413"\} 2/);
    expect(metrics).toMatch(/sirocco_requests_total\{route="\/v1\/chat\/completions",status="422"\} [1-9]/);
  });
});
