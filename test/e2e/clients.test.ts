/**
 * End to end across real processes: `wrangler dev` (the edge) in front of two real sidecars serving the demo
 * models, driven by every client the product promises to work with — our AI SDK provider, the stock
 * `@ai-sdk/mistral`, Mistral's official `@mistralai/mistralai`, `openai`, and raw `fetch`.
 *
 * The demo models have random weights, so the assertions are about the protocol (shapes, streaming, usage,
 * aborts, errors), never about what the text says.
 */
import { createMistral } from '@ai-sdk/mistral';
import { APICallError } from '@ai-sdk/provider';
import { Mistral } from '@mistralai/mistralai';
import { generateObject, generateText, streamText } from 'ai';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as z from 'zod';
import type { Stack } from '../../cli/commands/dev.ts';
import { createSirocco } from '../../clients/ai-sdk/index.ts';
import { ChatCompletionChunkSchema, ChatCompletionResponseSchema, ModelListSchema } from '../../shared/api.ts';
import { MistralErrorBodySchema } from '../../shared/errors.ts';
import { LoadReportSchema } from '../../shared/protocol.ts';
import { readSseEvents, SSE_DONE } from '../../shared/sse.ts';
import { completionTokensServed, signedSidecarGet, startTestStack } from '../support/stack-fixture.ts';

(globalThis as { AI_SDK_LOG_WARNINGS?: boolean }).AI_SDK_LOG_WARNINGS = false;

let stack: Stack;
beforeAll(async () => {
  stack = await startTestStack();
}, 300_000);
afterAll(async () => {
  await stack?.stop();
});

const userMessage = [{ role: 'user' as const, content: 'Tell me about the wind.' }];
const auth = () => ({ authorization: `Bearer ${stack.apiKey}`, 'content-type': 'application/json' });

describe('raw fetch', () => {
  it('lists the two local models', async () => {
    const response = await fetch(`${stack.edgeUrl}/v1/models`, { headers: auth() });
    expect(response.status).toBe(200);
    const list = ModelListSchema.parse(await response.json());
    expect(list.data.map((model) => model.id)).toEqual(expect.arrayContaining(['mistral-tiny', 'mistral-small']));
  });

  it('answers a non-streaming chat completion in Mistral format with usage', async () => {
    const response = await fetch(`${stack.edgeUrl}/v1/chat/completions`, {
      method: 'POST',
      headers: auth(),
      body: JSON.stringify({ model: 'open-mistral-7b', messages: userMessage, max_tokens: 8, temperature: 0 }),
    });
    expect(response.status).toBe(200);
    expect(response.headers.get('x-request-id')).toBeTruthy();
    const completion = ChatCompletionResponseSchema.parse(await response.json());
    expect(completion.model).toBe('mistral-tiny');
    expect(completion.usage.completion_tokens).toBeGreaterThan(0);
    expect(completion.usage.completion_tokens).toBeLessThanOrEqual(8);
    expect(completion.usage.total_tokens).toBe(completion.usage.prompt_tokens + completion.usage.completion_tokens);
  });

  it('streams SSE: role chunk first, content chunks, usage on the last chunk, then [DONE]', async () => {
    const response = await fetch(`${stack.edgeUrl}/v1/chat/completions`, {
      method: 'POST',
      headers: auth(),
      body: JSON.stringify({ model: 'mistral-small', messages: userMessage, max_tokens: 6, stream: true, random_seed: 3 }),
    });
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^text\/event-stream/);

    const data: string[] = [];
    for await (const event of readSseEvents(response.body!)) data.push(event.data);
    expect(data.at(-1)).toBe(SSE_DONE);
    const chunks = data.slice(0, -1).map((text) => ChatCompletionChunkSchema.parse(JSON.parse(text)));
    expect(chunks[0]!.choices[0]!.delta.role).toBe('assistant');
    const last = chunks.at(-1)!;
    expect(last.choices[0]!.finish_reason).toMatch(/^(stop|length)$/);
    expect(last.usage!.completion_tokens).toBeGreaterThan(0);
  });

  it('rejects an unknown API key with 401 in Mistral error format', async () => {
    const response = await fetch(`${stack.edgeUrl}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: 'Bearer sk-not-a-key', 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'mistral-tiny', messages: userMessage }),
    });
    expect(response.status).toBe(401);
    expect(MistralErrorBodySchema.parse(await response.json()).object).toBe('error');
  });
});

describe('our AI SDK provider (createSirocco)', () => {
  const model = (id = 'mistral-tiny') => createSirocco({ baseURL: `${stack.edgeUrl}/v1`, apiKey: stack.apiKey, region: 'us-east' })(id);

  it('generateText returns text with a finish reason and usage', async () => {
    const result = await generateText({ model: model(), prompt: 'Hello', maxOutputTokens: 8, temperature: 0 });
    expect(['stop', 'length']).toContain(result.finishReason);
    expect(result.usage.outputTokens).toBeGreaterThan(0);
    expect(result.usage.inputTokens).toBeGreaterThan(0);
    expect(result.response.modelId).toBe('mistral-tiny');
  });

  it('streamText streams deltas that add up to the final text, with usage', async () => {
    const result = streamText({ model: model('mistral-small'), prompt: 'Hello', maxOutputTokens: 8, seed: 11 });
    let streamed = '';
    for await (const delta of result.textStream) streamed += delta;
    expect(streamed).toBe(await result.text);
    expect((await result.usage).outputTokens).toBeGreaterThan(0);
    expect(['stop', 'length']).toContain(await result.finishReason);
  });

  it('the same seed gives the same text from the sidecars, and a repeat is served from the edge cache', async () => {
    const options = { model: model(), prompt: 'Seeded', maxOutputTokens: 8, temperature: 1, seed: 1234 };
    // Bypass the response cache so both answers are really generated.
    const bypass = { headers: { 'x-sirocco-cache': 'bypass' } };
    const first = await generateText({ ...options, ...bypass });
    const second = await generateText({ ...options, ...bypass });
    expect(second.text).toBe(first.text);
    expect(first.response.headers?.['x-cache']).toBe('BYPASS');

    const primed = await generateText(options);
    const cached = await generateText(options);
    expect(primed.text).toBe(first.text);
    expect(cached.response.headers?.['x-cache']).toBe('HIT');
    expect(cached.text).toBe(first.text);
  });

  it('JSON output: generateObject sends response_format and gets an object from the local model', async () => {
    // The sidecar constrains decoding to a JSON object (sidecar/json-mode.ts), so even the random demo weights
    // answer with one; a schema without properties leaves the object's content free.
    const exchanges: Array<{ body: { response_format?: { type: string } }; status: number }> = [];
    const recordingFetch: typeof fetch = async (input, init) => {
      const response = await fetch(input, init);
      exchanges.push({ body: JSON.parse(String(init?.body)) as { response_format?: { type: string } }, status: response.status });
      return response;
    };
    const provider = createSirocco({ baseURL: `${stack.edgeUrl}/v1`, apiKey: stack.apiKey, fetch: recordingFetch });

    for (const [modelId, seed] of [
      ['mistral-tiny', 1],
      ['mistral-small', 2],
    ] as const) {
      const result = await generateObject({
        model: provider(modelId),
        schema: z.looseObject({}),
        prompt: `Answer in JSON (${modelId})`,
        maxOutputTokens: 24,
        seed,
        maxRetries: 0,
      });
      expect(result.object).toBeTypeOf('object');
      expect(Array.isArray(result.object)).toBe(false);
      expect(result.finishReason).toBe('stop');
    }
    expect(exchanges.map(({ status }) => status)).toEqual([200, 200]);
    expect(exchanges.every(({ body }) => body.response_format?.type === 'json_schema')).toBe(true);
  });

  it("JSON output with a schema: the local model answers in the schema's shape, so generateObject validates it", async () => {
    const schema = z.object({ answer: z.string(), confidence: z.number(), sure: z.boolean() });
    const result = await generateObject({ model: model(), schema, prompt: 'Answer in JSON', maxOutputTokens: 48, seed: 3, maxRetries: 0 });
    expect(schema.safeParse(result.object).success).toBe(true);
    expect(Object.keys(result.object)).toEqual(['answer', 'confidence', 'sure']);
  });

  it('aborting a stream stops it and frees the sidecar slot', async () => {
    const controller = new AbortController();
    const result = streamText({
      model: model(),
      prompt: 'A long answer please',
      maxOutputTokens: 2000,
      abortSignal: controller.signal,
      onError: () => {},
    });
    let deltas = 0;
    for await (const part of result.fullStream) {
      if (part.type === 'text-delta' && ++deltas === 2) controller.abort();
    }
    expect(deltas).toBe(2);

    // Within a few decode steps both sidecars report no active sequence.
    const deadline = Date.now() + 10_000;
    let active = Infinity;
    while (Date.now() < deadline) {
      const reports = await Promise.all(
        stack.sidecars.map(async ({ region }) => LoadReportSchema.parse(await (await signedSidecarGet(stack, region, '/ready')).json())),
      );
      active = reports.reduce((sum, report) => sum + report.activeSequences, 0);
      if (active === 0) break;
      await new Promise((resolveWait) => setTimeout(resolveWait, 100));
    }
    expect(active).toBe(0);
  });

  it('maps an unknown model to a non-retryable APICallError with Mistral type invalid_model', async () => {
    const error = await generateText({ model: model('mistral-medium'), prompt: 'x' }).catch((caught: unknown) => caught);
    expect(APICallError.isInstance(error)).toBe(true);
    expect((error as APICallError).statusCode).toBe(400);
    expect((error as APICallError).isRetryable).toBe(false);
    expect((error as APICallError).data).toMatchObject({ type: 'invalid_model' });
  });
});

describe('@ai-sdk/mistral pointed at the edge', () => {
  const mistral = () => createMistral({ baseURL: `${stack.edgeUrl}/v1`, apiKey: stack.apiKey });

  it('generateText works', async () => {
    const result = await generateText({ model: mistral()('mistral-tiny'), prompt: 'Hello', maxOutputTokens: 8 });
    expect(result.usage.outputTokens).toBeGreaterThan(0);
    expect(['stop', 'length']).toContain(result.finishReason);
  });

  it('streamText works', async () => {
    const result = streamText({ model: mistral()('open-mixtral-8x7b'), prompt: 'Hello', maxOutputTokens: 8 });
    let streamed = '';
    for await (const delta of result.textStream) streamed += delta;
    expect(streamed).toBe(await result.text);
    expect((await result.usage).outputTokens).toBeGreaterThan(0);
  });
});

describe('@mistralai/mistralai (official client)', () => {
  const client = () => new Mistral({ apiKey: stack.apiKey, serverURL: stack.edgeUrl });

  it('chat.complete works', async () => {
    const response = await client().chat.complete({ model: 'mistral-tiny', messages: userMessage, maxTokens: 8 });
    expect(response.object).toBe('chat.completion');
    expect(response.usage!.completionTokens).toBeGreaterThan(0);
    expect(response.choices?.[0]?.message?.role).toBe('assistant');
  });

  it('chat.stream works', async () => {
    const stream = await client().chat.stream({ model: 'mistral-small', messages: userMessage, maxTokens: 8 });
    const finishReasons: string[] = [];
    let sawUsage = false;
    for await (const event of stream) {
      const reason = event.data.choices[0]?.finishReason;
      if (reason) finishReasons.push(reason);
      if (event.data.usage) sawUsage = true;
    }
    expect(finishReasons).toHaveLength(1);
    expect(sawUsage).toBe(true);
  });
});

describe('openai (baseURL …/v1)', () => {
  const client = () => new OpenAI({ apiKey: stack.apiKey, baseURL: `${stack.edgeUrl}/v1`, maxRetries: 0 });

  it('chat.completions.create works', async () => {
    const completion = await client().chat.completions.create({ model: 'mistral-tiny', messages: userMessage, max_tokens: 8 });
    expect(completion.choices[0]!.message.role).toBe('assistant');
    expect(completion.usage!.completion_tokens).toBeGreaterThan(0);
  });

  it('streaming works and ends cleanly', async () => {
    const stream = await client().chat.completions.create({ model: 'mistral-tiny', messages: userMessage, max_tokens: 8, stream: true });
    let chunks = 0;
    let finish: string | null = null;
    for await (const chunk of stream) {
      chunks++;
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(chunks).toBeGreaterThan(1);
    expect(finish).toMatch(/^(stop|length)$/);
  });

  it('an openai error surfaces as an APIError with the Mistral message', async () => {
    const error = await client()
      .chat.completions.create({ model: 'mistral-medium', messages: userMessage })
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(OpenAI.APIError);
    expect((error as InstanceType<typeof OpenAI.APIError>).status).toBe(400);
  });
});

describe('regional failover', () => {
  it('when the serving sidecar stops, requests keep succeeding through the other region', async () => {
    const model = createSirocco({ baseURL: `${stack.edgeUrl}/v1`, apiKey: stack.apiKey })('mistral-tiny');
    const ask = (prompt: string) => generateText({ model, prompt, maxOutputTokens: 4, maxRetries: 0 });
    const served = async () => {
      const entries = await Promise.all(
        stack.sidecars.map(async ({ region }) => [region, await completionTokensServed(stack, region)] as const),
      );
      return Object.fromEntries(entries);
    };

    const before = await served();
    await ask('which region?');
    const after = await served();
    const preferred = stack.sidecars.find(({ region }) => after[region]! > before[region]!)!.region;
    const other = stack.sidecars.find(({ region }) => region !== preferred)!.region;

    await stack.stopSidecar(preferred);
    const otherBefore = await completionTokensServed(stack, other);
    for (let attempt = 0; attempt < 3; attempt++) {
      const result = await ask(`after failover ${attempt}`);
      expect(result.usage.outputTokens).toBeGreaterThan(0);
    }
    expect(await completionTokensServed(stack, other)).toBeGreaterThan(otherBefore);
  });
});
