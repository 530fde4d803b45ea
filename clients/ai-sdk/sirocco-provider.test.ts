/**
 * The Sirocco AI SDK provider, driven through the AI SDK's own entry points (generateText, streamText,
 * generateObject) against a real local HTTP server that speaks Mistral's JSON and SSE formats.
 */
import { APICallError, LoadAPIKeyError, UnsupportedFunctionalityError } from '@ai-sdk/provider';
import { generateObject, generateText, Output, streamText, type TextStreamPart, type ToolSet } from 'ai';
import { convertReadableStreamToArray } from 'ai/test';
import { afterAll, beforeAll, beforeEach, describe, expect, expectTypeOf, it, vi } from 'vitest';
import * as z from 'zod';
import { type ChatCompletionRequest, ChatCompletionRequestSchema } from '../../shared/api.ts';
import { errorBody } from '../../shared/errors.ts';
import { encodeSseData } from '../../shared/sse.ts';
import { type ChatTestServer, chatCompletion, chatStreamEvents, startChatTestServer } from './chat-test-server.ts';
import { createSirocco } from './index.ts';
import type { SiroccoChatRequest } from './sirocco-api.ts';

// Warnings are asserted on results; keep the SDK from also printing them.
(globalThis as { AI_SDK_LOG_WARNINGS?: boolean }).AI_SDK_LOG_WARNINGS = false;

let server: ChatTestServer;
beforeAll(async () => {
  server = await startChatTestServer();
});
afterAll(() => server.close());
beforeEach(() => {
  server.requests.length = 0;
});

const provider = () => createSirocco({ baseURL: server.baseURL, apiKey: 'sk-test', region: 'eu-west', headers: { 'x-extra': 'yes' } });

describe('generateText', () => {
  it('posts a Mistral chat request and returns text, finish reason, usage and response metadata', async () => {
    server.script({ kind: 'json', body: chatCompletion('Bonjour le monde', { promptTokens: 11, completionTokens: 4 }) });

    const result = await generateText({
      model: provider()('mistral-tiny'),
      system: 'Be brief.',
      prompt: 'Say hello',
      maxOutputTokens: 16,
      temperature: 0.2,
      topP: 0.9,
      seed: 42,
      stopSequences: ['\n\n'],
      providerOptions: { sirocco: { safePrompt: true } },
    });

    expect(result.text).toBe('Bonjour le monde');
    expect(result.finishReason).toBe('stop');
    expect(result.usage.inputTokens).toBe(11);
    expect(result.usage.outputTokens).toBe(4);
    expect(result.response.id).toBe('cmpl-test-1');
    expect(result.response.modelId).toBe('mistral-tiny');
    expect(result.warnings).toEqual([]);

    const [request] = server.requests;
    expect(request!.path).toBe('/v1/chat/completions');
    expect(request!.headers.authorization).toBe('Bearer sk-test');
    expect(request!.headers['x-sirocco-region']).toBe('eu-west');
    expect(request!.headers['x-extra']).toBe('yes');
    expect(request!.body).toEqual({
      model: 'mistral-tiny',
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Say hello' },
      ],
      max_tokens: 16,
      temperature: 0.2,
      top_p: 0.9,
      random_seed: 42,
      stop: ['\n\n'],
      safe_prompt: true,
    });
  });

  it('maps a length cut-off to finishReason "length" and keeps the raw reason', async () => {
    server.script({ kind: 'json', body: chatCompletion('truncated', { finishReason: 'length' }) });
    const result = await generateText({ model: provider()('mistral-small'), prompt: 'Go on' });
    expect(result.finishReason).toBe('length');
    expect(result.rawFinishReason).toBe('length');
  });

  it('sends a multi-turn conversation with the assistant turns as text', async () => {
    server.script({ kind: 'json', body: chatCompletion('Fine.') });
    await generateText({
      model: provider()('mistral-tiny'),
      messages: [
        { role: 'user', content: 'Hi' },
        { role: 'assistant', content: 'Hello!' },
        {
          role: 'user',
          content: [
            { type: 'text', text: 'How ' },
            { type: 'text', text: 'are you?' },
          ],
        },
      ],
    });
    expect(server.requests[0]!.body.messages).toEqual([
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'Hello!' },
      { role: 'user', content: 'How are you?' },
    ]);
  });
});

describe('streamText', () => {
  it('streams text deltas in order and ends with the finish reason and usage from the last chunk', async () => {
    server.script({ kind: 'sse', writes: chatStreamEvents(['Hel', 'lo', ' world'], { promptTokens: 9 }), delayMs: 5 });

    const result = streamText({ model: provider()('mistral-tiny'), prompt: 'Say hello' });
    const deltas: string[] = [];
    for await (const delta of result.textStream) deltas.push(delta);

    expect(deltas).toEqual(['Hel', 'lo', ' world']);
    expect(await result.finishReason).toBe('stop');
    expect(await result.usage).toMatchObject({ inputTokens: 9, outputTokens: 3, totalTokens: 12 });
    expect(server.requests[0]!.body.stream).toBe(true);
  });

  it('emits the V3 stream parts in order: stream-start, response-metadata, one text block "0", finish', async () => {
    server.script({ kind: 'sse', writes: chatStreamEvents(['a', 'b']) });
    const { stream } = await provider()('mistral-tiny').doStream({ prompt: [{ role: 'user', content: [{ type: 'text', text: 'x' }] }] });
    const parts = await convertReadableStreamToArray(stream);

    expect(parts.map((part) => part.type)).toEqual([
      'stream-start',
      'response-metadata',
      'text-start',
      'text-delta',
      'text-delta',
      'text-end',
      'finish',
    ]);
    expect(parts[1]).toMatchObject({ id: 'cmpl-test-2', modelId: 'mistral-tiny', timestamp: new Date(1_700_000_000_000) });
    expect(parts.filter((part) => part.type.startsWith('text-')).every((part) => 'id' in part && part.id === '0')).toBe(true);
    expect(parts.at(-1)).toEqual({
      type: 'finish',
      finishReason: { unified: 'stop', raw: 'stop' },
      usage: {
        inputTokens: { total: 7, noCache: 7, cacheRead: undefined, cacheWrite: undefined },
        outputTokens: { total: 2, text: 2, reasoning: undefined },
        raw: { prompt_tokens: 7, completion_tokens: 2, total_tokens: 9 },
      },
    });
  });

  it('reassembles events split across network writes and ignores keep-alive comments', async () => {
    const events = chatStreamEvents(['split ', 'across ', 'reads']);
    const wire = [': keep-alive\n\n', ...events].join('');
    // Cut the byte stream into 7-character writes so JSON objects straddle reads.
    const writes = wire.match(/[\s\S]{1,7}/g)!;
    server.script({ kind: 'sse', writes });

    const result = streamText({ model: provider()('mistral-tiny'), prompt: 'x' });
    expect(await result.text).toBe('split across reads');
    expect(await result.finishReason).toBe('stop');
  });

  it('surfaces an error frame sent mid-stream as an error part carrying the server message', async () => {
    const [role, first] = chatStreamEvents(['partial']);
    const errorFrame = encodeSseData(errorBody('upstream_error', 'upstream sidecar failed'));
    server.script({ kind: 'sse', writes: [role!, first!, errorFrame] });

    const parts: Array<TextStreamPart<ToolSet>> = [];
    const result = streamText({ model: provider()('mistral-tiny'), prompt: 'x', onError: () => {} });
    for await (const part of result.fullStream) parts.push(part);

    const error = parts.find((part) => part.type === 'error');
    expect(error).toBeDefined();
    expect(String((error as { error: unknown }).error)).toContain('upstream sidecar failed');
    expect(parts.filter((part) => part.type === 'text-delta').map((part) => (part as { text: string }).text)).toEqual(['partial']);
  });
});

describe('JSON output', () => {
  it('generateObject with a schema sends response_format json_schema and parses the object', async () => {
    server.script({ kind: 'json', body: chatCompletion('{"city":"Paris","population":2102650}') });
    const { object } = await generateObject({
      model: provider()('mistral-small'),
      schema: z.object({ city: z.string(), population: z.number() }),
      schemaName: 'city',
      prompt: 'Largest city of France?',
    });

    expect(object).toEqual({ city: 'Paris', population: 2102650 });
    const responseFormat = server.requests[0]!.body.response_format as {
      type: string;
      json_schema: { name: string; schema: { properties: object } };
    };
    expect(responseFormat.type).toBe('json_schema');
    expect(responseFormat.json_schema.name).toBe('city');
    expect(Object.keys(responseFormat.json_schema.schema.properties)).toEqual(['city', 'population']);
  });

  it('schema-less JSON sends response_format json_object and tells the model to answer in JSON', async () => {
    server.script({ kind: 'json', body: chatCompletion('{"ok":true}') });
    const { object } = await generateObject({ model: provider()('mistral-tiny'), output: 'no-schema', prompt: 'Reply with ok' });

    expect(object).toEqual({ ok: true });
    const body = server.requests[0]!.body;
    expect(body.response_format).toEqual({ type: 'json_object' });
    expect(JSON.stringify(body.messages)).toMatch(/JSON/);
  });
});

describe('abort', () => {
  it('aborting a stream closes the HTTP request to the server', async () => {
    server.script({ kind: 'sse', writes: chatStreamEvents(['first']).slice(0, 2), holdOpen: true });
    const controller = new AbortController();
    const result = streamText({ model: provider()('mistral-tiny'), prompt: 'x', abortSignal: controller.signal, onError: () => {} });

    const seen: string[] = [];
    for await (const part of result.fullStream) {
      if (part.type === 'text-delta') {
        seen.push(part.text);
        controller.abort();
      }
    }
    expect(seen).toEqual(['first']);
    await server.requests[0]!.clientDisconnected; // resolves only if the socket was really closed
  });

  it('an already-aborted signal rejects generateText without a retry', async () => {
    server.script({ kind: 'json', body: chatCompletion('never read') });
    const controller = new AbortController();
    controller.abort();
    await expect(generateText({ model: provider()('mistral-tiny'), prompt: 'x', abortSignal: controller.signal })).rejects.toThrow(
      /abort/i,
    );
    expect(server.requests.length).toBeLessThanOrEqual(1);
  });
});

describe('errors', () => {
  it('maps a Mistral 400 error body to a non-retryable APICallError with the server message', async () => {
    server.script({
      kind: 'json',
      status: 400,
      body: { object: 'error', message: 'Invalid model: mistral-medium', type: 'invalid_model', param: null, code: '1500' },
    });
    const error = await generateText({ model: provider()('mistral-medium'), prompt: 'x' }).catch((caught: unknown) => caught);

    expect(APICallError.isInstance(error)).toBe(true);
    const apiError = error as APICallError;
    expect(apiError.statusCode).toBe(400);
    expect(apiError.isRetryable).toBe(false);
    expect(apiError.message).toBe('Invalid model: mistral-medium');
    expect(apiError.data).toMatchObject({ type: 'invalid_model', code: '1500' });
    expect(server.requests).toHaveLength(1);
  });

  it('401 and 422 are not retried; 422 keeps the validation detail', async () => {
    server.script({
      kind: 'json',
      status: 401,
      body: { object: 'error', message: 'Unauthorized', type: 'unauthorized', param: null, code: null },
    });
    const unauthorized = (await generateText({ model: provider()('mistral-tiny'), prompt: 'x' }).catch(
      (caught: unknown) => caught,
    )) as APICallError;
    expect(unauthorized.statusCode).toBe(401);

    server.script({
      kind: 'json',
      status: 422,
      body: {
        object: 'error',
        message: 'Extra inputs are not permitted',
        type: 'invalid_request_error',
        param: null,
        code: null,
        detail: [{ loc: ['body', 'foo'], msg: 'Extra inputs are not permitted', type: 'extra_forbidden' }],
      },
    });
    const invalid = (await generateText({ model: provider()('mistral-tiny'), prompt: 'x' }).catch(
      (caught: unknown) => caught,
    )) as APICallError;
    expect(invalid.statusCode).toBe(422);
    expect(invalid.isRetryable).toBe(false);
    expect(invalid.data).toMatchObject({ detail: [{ loc: ['body', 'foo'] }] });
    expect(server.requests).toHaveLength(2);
  });

  it('a non-JSON 502 from a proxy still becomes an APICallError and is retried', async () => {
    server.script({ kind: 'raw', status: 502, body: '<html>Bad Gateway</html>', headers: { 'content-type': 'text/html' } });
    const error = (await generateText({ model: provider()('mistral-tiny'), prompt: 'x', maxRetries: 1 }).catch(
      (caught: unknown) => caught,
    )) as Error;
    // After the retries run out the SDK wraps the last APICallError in a RetryError.
    const last = (error as { lastError?: unknown }).lastError;
    expect(APICallError.isInstance(last)).toBe(true);
    expect((last as APICallError).statusCode).toBe(502);
    expect((last as APICallError).isRetryable).toBe(true);
    expect(server.requests).toHaveLength(2);
  });

  it('errors before the stream starts reject streamText with the APICallError', async () => {
    server.script({
      kind: 'json',
      status: 400,
      body: { object: 'error', message: 'bad stop', type: 'invalid_request_error', param: 'stop', code: null },
    });
    const errors: unknown[] = [];
    const result = streamText({ model: provider()('mistral-tiny'), prompt: 'x', onError: ({ error }) => void errors.push(error) });
    await result.consumeStream();
    expect(errors).toHaveLength(1);
    expect(APICallError.isInstance(errors[0])).toBe(true);
    expect((errors[0] as APICallError).message).toBe('bad stop');
  });

  it('fails clearly when no API key is configured', async () => {
    const previous = process.env.SIROCCO_API_KEY;
    delete process.env.SIROCCO_API_KEY;
    try {
      const model = createSirocco({ baseURL: server.baseURL })('mistral-tiny');
      const error = await generateText({ model, prompt: 'x' }).catch((caught: unknown) => caught);
      expect(LoadAPIKeyError.isInstance(error)).toBe(true);
      expect(String(error)).toContain('SIROCCO_API_KEY');
      expect(server.requests).toHaveLength(0);
    } finally {
      if (previous !== undefined) process.env.SIROCCO_API_KEY = previous;
    }
  });
});

describe('retries honour Retry-After', () => {
  it('waits the Retry-After seconds of a 429 (not the 2 s default backoff) and then succeeds', async () => {
    server.script(
      {
        kind: 'json',
        status: 429,
        headers: { 'retry-after': '0.3' },
        body: { object: 'error', message: 'Rate limit exceeded', type: 'rate_limited', param: null, code: '1300' },
      },
      { kind: 'json', body: chatCompletion('after the wait') },
    );
    const result = await generateText({ model: provider()('mistral-tiny'), prompt: 'x' });

    expect(result.text).toBe('after the wait');
    expect(server.requests).toHaveLength(2);
    const waited = server.requests[1]!.receivedAt - server.requests[0]!.receivedAt;
    expect(waited).toBeGreaterThanOrEqual(280);
    expect(waited).toBeLessThan(1900);
  });

  it('prefers retry-after-ms on a 503', async () => {
    server.script(
      {
        kind: 'json',
        status: 503,
        headers: { 'retry-after-ms': '150', 'retry-after': '30' },
        body: { object: 'error', message: 'Sidecar queue full', type: 'service_unavailable', param: null, code: null },
      },
      { kind: 'json', body: chatCompletion('ok') },
    );
    const result = await generateText({ model: provider()('mistral-tiny'), prompt: 'x' });
    expect(result.text).toBe('ok');
    const waited = server.requests[1]!.receivedAt - server.requests[0]!.receivedAt;
    expect(waited).toBeGreaterThanOrEqual(130);
    expect(waited).toBeLessThan(1900);
  });
});

describe('warnings for unsupported settings', () => {
  it('returns warnings (never throws) and does not send the unsupported fields', async () => {
    server.script({ kind: 'json', body: chatCompletion('ok') });
    const result = await generateText({
      model: provider()('mistral-tiny'),
      prompt: 'x',
      topK: 5,
      presencePenalty: 0.5,
      frequencyPenalty: 0.5,
    });

    expect(result.warnings).toEqual([
      { type: 'unsupported', feature: 'topK' },
      { type: 'unsupported', feature: 'presencePenalty' },
      { type: 'unsupported', feature: 'frequencyPenalty' },
    ]);
    const body = server.requests[0]!.body;
    expect(Object.keys(body)).not.toEqual(expect.arrayContaining(['top_k', 'presence_penalty', 'frequency_penalty']));
    expect(body).not.toHaveProperty('top_k');
    expect(body).not.toHaveProperty('presence_penalty');
  });

  it('tools are reported as unsupported at stream start', async () => {
    server.script({ kind: 'sse', writes: chatStreamEvents(['ok']) });
    const { stream } = await provider()('mistral-tiny').doStream({
      prompt: [{ role: 'user', content: [{ type: 'text', text: 'x' }] }],
      tools: [{ type: 'function', name: 'weather', inputSchema: { type: 'object' } }],
      toolChoice: { type: 'required' },
    });
    const [start] = await convertReadableStreamToArray(stream);
    expect(start).toEqual({
      type: 'stream-start',
      warnings: [
        { type: 'unsupported', feature: 'tools' },
        { type: 'unsupported', feature: 'toolChoice', details: '"required": the models do not call tools' },
      ],
    });
    expect(server.requests[0]!.body).not.toHaveProperty('tools');
  });

  it('file parts in the prompt are rejected with UnsupportedFunctionalityError before any request', async () => {
    const error = await generateText({
      model: provider()('mistral-tiny'),
      messages: [{ role: 'user', content: [{ type: 'image', image: new Uint8Array([1, 2, 3]), mediaType: 'image/png' }] }],
      maxRetries: 0,
    }).catch((caught: unknown) => caught);
    expect(UnsupportedFunctionalityError.isInstance(error)).toBe(true);
    expect(server.requests).toHaveLength(0);
  });
});

describe('default instance', () => {
  it('`sirocco` takes its base URL from SIROCCO_BASE_URL and its key from SIROCCO_API_KEY', async () => {
    const previous = { base: process.env.SIROCCO_BASE_URL, key: process.env.SIROCCO_API_KEY };
    process.env.SIROCCO_BASE_URL = `${server.baseURL}/`; // a trailing slash is tolerated
    process.env.SIROCCO_API_KEY = 'sk-from-env';
    try {
      vi.resetModules();
      const { sirocco } = await import('./index.ts');
      server.script({ kind: 'json', body: chatCompletion('from env') });

      const result = await generateText({ model: sirocco('mistral-tiny'), prompt: 'x' });
      expect(result.text).toBe('from env');
      expect(server.requests[0]!.path).toBe('/v1/chat/completions');
      expect(server.requests[0]!.headers.authorization).toBe('Bearer sk-from-env');
      expect(server.requests[0]!.headers).not.toHaveProperty('x-sirocco-region');
    } finally {
      for (const [name, value] of [
        ['SIROCCO_BASE_URL', previous.base],
        ['SIROCCO_API_KEY', previous.key],
      ] as const) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
  });

  it('cannot be called with new, and has no embedding or image models', () => {
    const provider = createSirocco({ apiKey: 'sk-test' });
    expect(provider.languageModel('mistral-small').modelId).toBe('mistral-small');
    expect(provider.chat('mistral-tiny').provider).toBe('sirocco.chat');
    expect(() => provider.embeddingModel('mistral-embed')).toThrow(/No such embeddingModel/);
    expect(() => provider.imageModel('x')).toThrow(/No such imageModel/);
  });
});

describe('wire types', () => {
  it("the provider's own request type fits the API's, and a request with every setting passes the API's strict schema", async () => {
    expectTypeOf<SiroccoChatRequest>().toExtend<ChatCompletionRequest>();
    server.script({ kind: 'json', body: chatCompletion('{"a":1}') });
    await generateText({
      model: provider()('mistral-tiny'),
      output: Output.object({ schema: z.object({ a: z.number() }), description: 'one number' }),
      system: 'Be brief.',
      messages: [
        { role: 'user', content: 'a?' },
        { role: 'assistant', content: 'Which a?' },
        { role: 'user', content: 'The first.' },
      ],
      maxOutputTokens: 16,
      temperature: 0.2,
      topP: 0.9,
      seed: 5,
      stopSequences: ['END'],
      providerOptions: { sirocco: { safePrompt: true } },
    });
    const body = server.requests[0]!.body;
    expect(Object.keys(body).sort()).toEqual(
      ['max_tokens', 'messages', 'model', 'random_seed', 'response_format', 'safe_prompt', 'stop', 'temperature', 'top_p'].sort(),
    );
    expect(ChatCompletionRequestSchema.safeParse(body).success).toBe(true);
  });

  it('the test server answers 422 to a body the API refuses, as the edge does', async () => {
    const response = await fetch(`${server.baseURL}/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'mistral-tiny', messages: [{ role: 'user', content: 'x' }], top_k: 3 }),
    });
    expect(response.status).toBe(422);
    expect(await response.json()).toMatchObject({ object: 'error', detail: [{ loc: ['body', 'top_k'], type: 'extra_forbidden' }] });
  });
});
