/**
 * The sidecar speaks Mistral's chat API itself, served by a real `sirocco serve` process on the demo
 * model: JSON and SSE responses in Mistral's exact shapes, the model list, health and load report,
 * Prometheus metrics, request ids, and seeded sampling that gives the same text whatever else
 * shares the batch.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChatCompletionChunkSchema, ChatCompletionResponseSchema, ModelListSchema } from '../../shared/api.ts';
import { LoadReportSchema } from '../../shared/protocol.ts';
import { readSseEvents } from '../../shared/sse.ts';
import { chatRequest, postChat, readStream, type SidecarProcess, startSidecarProcess } from '../support/sidecar-process.ts';

let sidecar: SidecarProcess;
beforeAll(async () => {
  sidecar = await startSidecarProcess({ args: ['--region', 'test-west', '--max-batch', '8'] });
});
afterAll(async () => {
  expect(await sidecar?.stop()).toBe(0);
});

describe('non-streaming chat', () => {
  it('answers with one chat.completion object, usage included', async () => {
    const response = await postChat(sidecar.url, chatRequest('Hello there', { max_tokens: 6, temperature: 0 }));
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toContain('application/json');
    const body = ChatCompletionResponseSchema.parse(await response.json());
    expect(body.object).toBe('chat.completion');
    expect(body.id).toMatch(/^cmpl-[0-9a-f]{32}$/);
    expect(body.model).toBe('mistral-tiny');
    expect(body.choices).toHaveLength(1);
    expect(body.choices[0]!.index).toBe(0);
    expect(body.choices[0]!.message.role).toBe('assistant');
    expect(['stop', 'length']).toContain(body.choices[0]!.finish_reason);
    expect(body.usage.prompt_tokens).toBeGreaterThan(3);
    expect(body.usage.completion_tokens).toBeGreaterThan(0);
    expect(body.usage.completion_tokens).toBeLessThanOrEqual(6);
    expect(body.usage.total_tokens).toBe(body.usage.prompt_tokens + body.usage.completion_tokens);
  });

  it('accepts the aliases of the canonical model id and answers with the canonical id', async () => {
    for (const alias of ['open-mistral-7b', 'mistral-tiny-2312']) {
      const response = await postChat(sidecar.url, { ...chatRequest('Hi', { max_tokens: 2 }), model: alias });
      expect(response.status).toBe(200);
      expect(((await response.json()) as { model: string }).model).toBe('mistral-tiny');
    }
  });

  it('stops at max_tokens with finish_reason "length" when the model does not end first', async () => {
    const response = await postChat(sidecar.url, chatRequest('Count', { max_tokens: 3, temperature: 1, random_seed: 3 }));
    const body = ChatCompletionResponseSchema.parse(await response.json());
    if (body.choices[0]!.finish_reason === 'length') expect(body.usage.completion_tokens).toBe(3);
    else expect(body.usage.completion_tokens).toBeLessThan(3);
  });
});

describe('demo model defaults', () => {
  it('caps an unset max_tokens at 256 on the demo models, so an answer cannot fill the 8k context', async () => {
    const response = await postChat(sidecar.url, chatRequest('Go on forever.', { temperature: 0, max_tokens: undefined }));
    const body = ChatCompletionResponseSchema.parse(await response.json());
    expect(body.choices[0]!.finish_reason).toBe('length');
    expect(body.usage.completion_tokens).toBe(256);
  });

  it('serves a demo model named with --model demo-small, capped the same way', async () => {
    const named = await startSidecarProcess({ args: ['--model', 'demo-small'] });
    try {
      const models = ModelListSchema.parse(await (await fetch(`${named.url}/v1/models`)).json());
      expect(models.data.map((model) => model.id)).toEqual(['mistral-small']);
      const response = await postChat(named.url, {
        ...chatRequest('Go on forever.', { temperature: 0, max_tokens: undefined }),
        model: 'mistral-small',
      });
      const body = ChatCompletionResponseSchema.parse(await response.json());
      expect(body.choices[0]!.finish_reason).toBe('length');
      expect(body.usage.completion_tokens).toBe(256);
    } finally {
      expect(await named.stop()).toBe(0);
    }
  });
});

describe('streaming chat', () => {
  it('sends the role chunk first, content chunks, usage in the last chunk, then [DONE]', async () => {
    const response = await postChat(sidecar.url, chatRequest('Tell me a story', { stream: true, max_tokens: 8, random_seed: 11 }));
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toContain('text/event-stream');
    const { chunks, sawDone } = await readStream(response);
    expect(sawDone).toBe(true);
    for (const chunk of chunks) ChatCompletionChunkSchema.parse(chunk);
    const first = ChatCompletionChunkSchema.parse(chunks[0]);
    expect(first.choices[0]!.delta).toEqual({ role: 'assistant', content: '' });
    expect(new Set(chunks.map((chunk) => chunk.id)).size).toBe(1);
    const last = ChatCompletionChunkSchema.parse(chunks.at(-1));
    expect(['stop', 'length']).toContain(last.choices[0]!.finish_reason);
    expect(last.usage?.completion_tokens).toBeGreaterThan(0);
    for (const middle of chunks.slice(0, -1)) {
      expect(middle.usage ?? null).toBeNull();
      expect((middle.choices as Array<{ finish_reason: unknown }>)[0]!.finish_reason).toBeNull();
    }
  });

  it('writes each event as one frame: "data: " with one space, a blank line after each', async () => {
    const response = await postChat(sidecar.url, chatRequest('Frames', { stream: true, max_tokens: 4 }));
    const raw = await response.text();
    const frames = raw.split('\n\n').filter((frame) => frame !== '');
    expect(raw.endsWith('data: [DONE]\n\n')).toBe(true);
    for (const frame of frames) expect(frame).toMatch(/^data: \S/);
    expect(frames.filter((frame) => frame === 'data: [DONE]')).toHaveLength(1);
  });

  it('streams the same text the non-streaming call returns for the same seed', async () => {
    const request = chatRequest('Same seed, same words', { max_tokens: 10, temperature: 0.9, random_seed: 1234 });
    const whole = ChatCompletionResponseSchema.parse(await (await postChat(sidecar.url, request)).json());
    const streamed = await readStream(await postChat(sidecar.url, { ...request, stream: true }));
    expect(streamed.text).toBe(whole.choices[0]!.message.content);
  });
});

describe('seeded sampling under continuous batching', () => {
  it('gives the same text alone and while other requests join its decode steps', async () => {
    const probe = chatRequest('What is the capital of France? Answer in one long paragraph, please.', {
      max_tokens: 48,
      temperature: 1,
      random_seed: 42,
    });
    const alone = ChatCompletionResponseSchema.parse(await (await postChat(sidecar.url, probe)).json());

    const probeStream = await postChat(sidecar.url, { ...probe, stream: true });
    const events = readSseEvents(probeStream.body!);
    const head = [(await events.next()).value!, (await events.next()).value!];
    // Five requests with other prompts, seeds, lengths and modes join the running batch.
    const others = [1, 2, 3, 4, 5].map((seed) =>
      postChat(
        sidecar.url,
        chatRequest(`Other ${'x '.repeat(seed)}`, { max_tokens: 10 + seed * 5, temperature: 1, random_seed: seed, stream: seed % 2 === 0 }),
      ).then((r) => r.text()),
    );
    let text = '';
    let usage: unknown;
    for await (const event of (async function* () {
      yield* head;
      yield* events;
    })()) {
      if (event.data === '[DONE]') continue;
      const chunk = ChatCompletionChunkSchema.parse(JSON.parse(event.data));
      text += chunk.choices[0]?.delta.content ?? '';
      usage = chunk.usage ?? usage;
    }
    await Promise.all(others);

    expect(text).toBe(alone.choices[0]!.message.content);
    expect(usage).toEqual(alone.usage);
    const metrics = await (await fetch(`${sidecar.url}/metrics`)).text();
    expect(Number(/sirocco_batch_size_sum\{model="mistral-tiny",kind="decode"\} (\d+)/.exec(metrics)?.[1])).toBeGreaterThan(
      Number(/sirocco_batch_size_count\{model="mistral-tiny",kind="decode"\} (\d+)/.exec(metrics)?.[1]),
    );
  });

  it('really batches: concurrent requests share forward steps (batch size histogram above 1)', async () => {
    await Promise.all(
      [1, 2, 3, 4].map((seed) =>
        postChat(sidecar.url, chatRequest('Batch me', { max_tokens: 8, random_seed: seed })).then((r) => r.text()),
      ),
    );
    const metrics = await (await fetch(`${sidecar.url}/metrics`)).text();
    const count = Number(/sirocco_batch_size_count\{model="mistral-tiny",kind="decode"\} (\d+)/.exec(metrics)?.[1]);
    const singles = Number(/sirocco_batch_size_bucket\{le="1",model="mistral-tiny",kind="decode"\} (\d+)/.exec(metrics)?.[1]);
    expect(count).toBeGreaterThan(singles);
  });
});

describe('models, health, load report and metrics', () => {
  it('lists the served model with its aliases and context length', async () => {
    const response = await fetch(`${sidecar.url}/v1/models`);
    const list = ModelListSchema.parse(await response.json());
    const card = list.data.find((model) => model.id === 'mistral-tiny');
    expect(card?.aliases).toEqual(expect.arrayContaining(['open-mistral-7b', 'mistral-tiny-2312']));
    expect(card?.max_context_length).toBeGreaterThan(0);
    expect(card?.object).toBe('model');
  });

  it('is alive on /health and ready on /ready with a load report for routing', async () => {
    expect((await fetch(`${sidecar.url}/health`)).status).toBe(200);
    const response = await fetch(`${sidecar.url}/ready`);
    expect(response.status).toBe(200);
    const report = LoadReportSchema.parse(await response.json());
    expect(report).toMatchObject({ ready: true, region: 'test-west', maxBatch: 8, queueDepth: 0, activeSequences: 0 });
    expect(report.models).toEqual(expect.arrayContaining(['mistral-tiny', 'mistral-small']));
    expect(report.tokensPerSecond).toBeGreaterThan(0); // earlier tests generated tokens
  });

  it('exports Prometheus metrics about the requests it served', async () => {
    const response = await fetch(`${sidecar.url}/metrics`);
    expect(response.headers.get('content-type')).toContain('text/plain');
    const text = await response.text();
    expect(text).toMatch(/sirocco_requests_total\{route="\/v1\/chat\/completions",status="200"\} [1-9]/);
    expect(text).toMatch(/sirocco_time_to_first_token_seconds_count\{model="mistral-tiny"\} [1-9]/);
    expect(text).toMatch(/sirocco_inter_token_latency_seconds_count\{model="mistral-tiny"\} [1-9]/);
    expect(text).toMatch(/sirocco_completion_tokens_total\{model="mistral-tiny"\} [1-9]/);
    expect(text).toContain('sirocco_queue_depth{model="mistral-tiny"} 0');
    expect(text).toContain('sirocco_active_sequences{model="mistral-small"} 0');
    // --kv-cache-mb auto: each model's KV memory, reserved at load.
    expect(text).toMatch(/sirocco_kv_reserved_bytes\{model="mistral-tiny"\} [1-9]\d*/);
    expect(text).toMatch(/sirocco_kv_reserved_in_use_bytes\{model="mistral-small"\} \d+/);
  });

  it('echoes the caller’s x-request-id, or makes one, and logs it as JSON', async () => {
    const response = await postChat(sidecar.url, chatRequest('Trace me', { max_tokens: 2 }), {
      headers: { 'x-request-id': 'edge-req-123' },
    });
    expect(response.headers.get('x-request-id')).toBe('edge-req-123');
    await response.text();
    const generated = await fetch(`${sidecar.url}/health`);
    expect(generated.headers.get('x-request-id')).toMatch(/^[\w-]{8,}$/);
    await expect
      .poll(() => sidecar.logs.some((line) => line.requestId === 'edge-req-123' && line.msg === 'generation finished'))
      .toBe(true);
    expect(sidecar.logs.find((line) => line.requestId === 'edge-req-123' && line.msg === 'request')).toMatchObject({
      status: 200,
      path: '/v1/chat/completions',
    });
  });

  it('serves the MoE demo model too', async () => {
    const response = await postChat(sidecar.url, { ...chatRequest('Experts, assemble', { max_tokens: 4 }), model: 'open-mixtral-8x7b' });
    const body = ChatCompletionResponseSchema.parse(await response.json());
    expect(body.model).toBe('mistral-small');
    expect(body.usage.completion_tokens).toBeGreaterThan(0);
  });
});
