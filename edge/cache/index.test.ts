/**
 * The response cache in workerd (Cache API and KV): deterministic answers are served again per
 * tenant, a cached answer replays as SSE, streamed answers are cached only when they end cleanly,
 * and errors, non-deterministic requests and bypassed requests never touch the cache.
 */
import { createExecutionContext, waitOnExecutionContext } from 'cloudflare:test';
import { env } from 'cloudflare:workers';
import { Hono } from 'hono';
import { describe, expect, it, vi } from 'vitest';
import { ChatCompletionChunkSchema, type ChatCompletionRequest, type ChatCompletionResponse, messageText } from '../../shared/api.ts';
import { errorBody, streamErrorFrame } from '../../shared/errors.ts';
import { encodeSseData, readSseEvents, SSE_DONE, SSE_HEADERS, SSE_KEEP_ALIVE } from '../../shared/sse.ts';
import { createCompletionAssembler } from './completion-assembler.ts';
import { cacheApiStore, kvStore, parseTtlSeconds, type ResponseCacheBindings, replayAsSse, responseCache, tieredStore } from './index.ts';

type CacheTestEnv = { Bindings: ResponseCacheBindings };
type Upstream = (request: ChatCompletionRequest, call: number) => Response;

const usage = { prompt_tokens: 9, completion_tokens: 4, total_tokens: 13 };

/** A sidecar stand-in whose answer names the call that produced it, so a replay is recognisable. */
function completion(request: ChatCompletionRequest, call: number): ChatCompletionResponse {
  const prompt = messageText(request.messages.at(-1)?.content);
  return {
    id: `cmpl-${call}`,
    object: 'chat.completion',
    created: 1_700_000_000,
    model: 'mistral-tiny',
    choices: [{ index: 0, message: { role: 'assistant', content: `answer ${call} to ${prompt}` }, finish_reason: 'stop' }],
    usage,
  };
}

const jsonUpstream: Upstream = (request, call) => Response.json(completion(request, call));

/** Streams the answer as Mistral does, one event per write; `cut` ends it with an error frame instead. */
function sseUpstream({ cut = false, onCancel = () => {} } = {}): Upstream {
  return (request, call) => {
    const answer = completion(request, call);
    const base = { id: answer.id, object: 'chat.completion.chunk', created: answer.created, model: answer.model };
    const text = answer.choices[0]?.message.content ?? '';
    const events = [
      SSE_KEEP_ALIVE, // a long prefill: comments must not disturb the assembled answer
      encodeSseData({ ...base, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] }),
      encodeSseData({ ...base, choices: [{ index: 0, delta: { content: text.slice(0, 6) }, finish_reason: null }] }),
      cut
        ? encodeSseData(streamErrorFrame('upstream_error', 'sidecar went away'))
        : encodeSseData({ ...base, choices: [{ index: 0, delta: { content: text.slice(6) }, finish_reason: 'stop' }], usage }),
      ...(cut ? [] : [encodeSseData(SSE_DONE)]),
    ];
    const encoder = new TextEncoder();
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        const next = events.shift();
        if (next === undefined) controller.close();
        else controller.enqueue(encoder.encode(next));
      },
      cancel: onCancel,
    });
    return new Response(body, { headers: SSE_HEADERS });
  };
}

/** An app with the cache in front of `upstream`; the tenant comes from `x-tenant`. */
function cachedApp(upstream: Upstream, bindings: ResponseCacheBindings = { CACHE_TTL_SECONDS: '60' }) {
  let calls = 0;
  const app = new Hono<CacheTestEnv>();
  app.post('/v1/chat/completions', responseCache<CacheTestEnv>({ tenant: (c) => c.req.header('x-tenant') }), async (c) => {
    calls += 1;
    return upstream(await c.req.json(), calls);
  });
  app.onError((error, c) => c.json(errorBody('internal_error', error.message), 500));

  /** Sends a request, reads the whole body, then lets background cache writes finish. */
  async function send(request: Partial<ChatCompletionRequest>, headers: Record<string, string> = {}) {
    const ctx = createExecutionContext();
    const response = await app.fetch(
      new Request('https://edge.test/v1/chat/completions', {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-tenant': 'acme', ...headers },
        body: JSON.stringify({ model: 'mistral-tiny', temperature: 0, ...request }),
      }),
      bindings,
      ctx,
    );
    const body = await response.text();
    await waitOnExecutionContext(ctx);
    return { status: response.status, cache: response.headers.get('x-cache'), contentType: response.headers.get('content-type'), body };
  }
  return { app, send, calls: () => calls };
}

/** A unique prompt per test, so tests never share cache entries. */
const prompt = (content = crypto.randomUUID()) => ({ messages: [{ role: 'user' as const, content }] });

function contentOf(body: string): string | null | undefined {
  return (JSON.parse(body) as ChatCompletionResponse).choices[0]?.message.content;
}

describe('responseCache', () => {
  it('answers a repeated deterministic request from the cache without calling the sidecar', async () => {
    const { send, calls } = cachedApp(jsonUpstream);
    const request = prompt('hello');
    const first = await send(request);
    expect(first).toMatchObject({ status: 200, cache: 'MISS' });
    const second = await send(request);
    expect(second.cache).toBe('HIT');
    expect(second.contentType).toMatch(/^application\/json/);
    expect(JSON.parse(second.body)).toEqual(JSON.parse(first.body));
    expect(calls()).toBe(1);
  });

  it('caches seeded requests too, but never non-deterministic ones', async () => {
    const { send, calls } = cachedApp(jsonUpstream);
    const seeded = { ...prompt(), temperature: 0.7, random_seed: 42 };
    await send(seeded);
    expect((await send(seeded)).cache).toBe('HIT');

    const sampled = { ...prompt(), temperature: 0.7 };
    expect((await send(sampled)).cache).toBe('BYPASS');
    const again = await send(sampled);
    expect(again.cache).toBe('BYPASS');
    expect(contentOf(again.body)).toMatch(/^answer 3 /);
    expect((await send({ ...prompt(), temperature: undefined })).cache).toBe('BYPASS'); // default temperature 0.7
    expect(calls()).toBe(4);
  });

  it('keeps tenants apart', async () => {
    const { send, calls } = cachedApp(jsonUpstream);
    const request = prompt();
    await send(request, { 'x-tenant': 'acme' });
    const other = await send(request, { 'x-tenant': 'globex' });
    expect(other.cache).toBe('MISS');
    expect(contentOf(other.body)).toMatch(/^answer 2 /);
    expect((await send(request, { 'x-tenant': 'globex' })).cache).toBe('HIT');
    expect(calls()).toBe(2);
  });

  it('skips lookup and store for `x-sirocco-cache: bypass`', async () => {
    const { send, calls } = cachedApp(jsonUpstream);
    const request = prompt();
    expect((await send(request, { 'x-sirocco-cache': 'bypass' })).cache).toBe('BYPASS');
    expect((await send(request)).cache).toBe('MISS'); // the bypassed answer was not stored
    expect((await send(request, { 'x-sirocco-cache': 'Bypass' })).cache).toBe('BYPASS'); // nor served
    expect(calls()).toBe(3);
  });

  it('never caches error responses', async () => {
    const failing: Upstream = () => Response.json(errorBody('overloaded', 'queue full'), { status: 503 });
    const { send, calls } = cachedApp(failing);
    const request = prompt();
    expect(await send(request)).toMatchObject({ status: 503, cache: 'MISS' });
    expect(await send(request)).toMatchObject({ status: 503, cache: 'MISS' });
    expect(calls()).toBe(2);
  });

  it('never caches truncated answers (finish_reason error)', async () => {
    const truncated: Upstream = (request, call) => {
      const answer = completion(request, call);
      return Response.json({ ...answer, choices: [{ ...answer.choices[0], finish_reason: 'error' }] });
    };
    const { send } = cachedApp(truncated);
    const request = prompt();
    await send(request);
    expect((await send(request)).cache).toBe('MISS');
  });

  it('replays a cached answer as SSE to a streaming client: one event per chunk, usage last, then [DONE]', async () => {
    const { app, send } = cachedApp(jsonUpstream);
    const request = prompt('stream me');
    const original = JSON.parse((await send(request)).body) as ChatCompletionResponse;

    const response = await app.fetch(
      new Request('https://edge.test/v1/chat/completions', {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-tenant': 'acme' },
        body: JSON.stringify({ model: 'mistral-tiny', temperature: 0, stream: true, ...request }),
      }),
      { CACHE_TTL_SECONDS: '60' },
      createExecutionContext(),
    );
    expect(response.headers.get('x-cache')).toBe('HIT');
    expect(response.headers.get('content-type')).toMatch(/^text\/event-stream/);

    const reads: string[] = [];
    const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
    for (let read = await reader.read(); !read.done; read = await reader.read()) reads.push(read.value);
    expect(reads.every((read) => /^data: .+\n\n$/s.test(read) && read.indexOf('data: ', 1) === -1)).toBe(true);
    expect(reads.at(-1)).toBe('data: [DONE]\n\n');

    const chunks = reads.slice(0, -1).map((read) => ChatCompletionChunkSchema.parse(JSON.parse(read.slice(6))));
    expect(chunks[0]?.choices[0]?.delta).toEqual({ role: 'assistant', content: '' });
    expect(chunks.map((chunk) => chunk.choices[0]?.delta.content ?? '').join('')).toBe(original.choices[0]?.message.content);
    expect(chunks.slice(0, -1).every((chunk) => chunk.usage == null && chunk.choices[0]?.finish_reason === null)).toBe(true);
    expect(chunks.at(-1)).toMatchObject({ id: original.id, usage, choices: [{ finish_reason: 'stop' }] });
  });

  it('replays and re-assembles any completion losslessly, tool calls included', async () => {
    const withTools: ChatCompletionResponse = {
      ...completion({ model: 'mistral-medium', ...prompt('weather?') }, 3),
      choices: [
        {
          index: 0,
          message: {
            role: 'assistant',
            content: '',
            tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'weather', arguments: '{"city":"Tunis"}' } }],
          },
          finish_reason: 'tool_calls',
        },
      ],
    };
    for (const original of [withTools, completion({ model: 'mistral-tiny', ...prompt() }, 4)]) {
      const assembler = createCompletionAssembler();
      for await (const event of readSseEvents(replayAsSse(original).body!)) assembler.push(event);
      expect(assembler.completion()).toEqual(original);
    }
  });

  it('caches a cleanly finished stream as its assembled completion, passing the stream through unchanged', async () => {
    const upstream = sseUpstream();
    const { send, calls } = cachedApp(upstream);
    const request = prompt('assemble');
    const streamed = await send({ ...request, stream: true });
    expect(streamed.cache).toBe('MISS');
    const direct = await upstream({ model: 'mistral-tiny', ...request }, 1).text();
    expect(streamed.body).toBe(direct);

    const replay = await send(request);
    expect(replay.cache).toBe('HIT');
    expect(JSON.parse(replay.body)).toEqual({
      id: 'cmpl-1',
      object: 'chat.completion',
      created: 1_700_000_000,
      model: 'mistral-tiny',
      choices: [{ index: 0, message: { role: 'assistant', content: 'answer 1 to assemble' }, finish_reason: 'stop' }],
      usage,
    });
    expect(calls()).toBe(1);
  });

  it('never caches a stream that ended with an error frame', async () => {
    const { send, calls } = cachedApp(sseUpstream({ cut: true }));
    const request = { ...prompt(), stream: true };
    const cut = await send(request);
    expect(cut.body).toContain('"object":"error"');
    expect(cut.body).not.toContain(SSE_DONE);
    expect((await send(request)).cache).toBe('MISS');
    expect(calls()).toBe(2);
  });

  it('never caches a stream whose upstream connection broke', async () => {
    const encoder = new TextEncoder();
    const breaking: Upstream = (request, call) => {
      const answer = completion(request, call);
      const first = { id: answer.id, object: 'chat.completion.chunk', created: answer.created, model: answer.model };
      let sent = false;
      const body = new ReadableStream<Uint8Array>({
        pull(controller) {
          if (sent) return controller.error(new Error('connection reset by peer'));
          sent = true;
          controller.enqueue(
            encoder.encode(
              encodeSseData({ ...first, choices: [{ index: 0, delta: { role: 'assistant', content: 'Har' }, finish_reason: null }] }),
            ),
          );
        },
      });
      return new Response(body, { headers: SSE_HEADERS });
    };
    const { send, calls } = cachedApp(breaking);
    const request = { ...prompt(), stream: true };
    await expect(send(request)).rejects.toThrow(/connection reset by peer/);
    await expect(send(request)).rejects.toThrow(/connection reset by peer/);
    expect(calls()).toBe(2); // the broken answer was not stored
  });

  it('never caches a stream the client abandoned half way, and cancels the upstream', async () => {
    let upstreamCancelled = false;
    const { app, send } = cachedApp(sseUpstream({ onCancel: () => (upstreamCancelled = true) }));
    const request = { ...prompt(), stream: true };
    const ctx = createExecutionContext();
    const response = await app.fetch(
      new Request('https://edge.test/v1/chat/completions', {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-tenant': 'acme' },
        body: JSON.stringify({ model: 'mistral-tiny', temperature: 0, ...request }),
      }),
      { CACHE_TTL_SECONDS: '60' },
      ctx,
    );
    for await (const event of readSseEvents(response.body!)) {
      if (event.data.includes('"role"')) break; // disconnect after the first event
    }
    await waitOnExecutionContext(ctx);
    expect(upstreamCancelled).toBe(true);
    expect((await send(request)).cache).toBe('MISS');
  });

  it('serves an answer stored in KV by another data centre, copying it into the local cache', async () => {
    const kv = (env as unknown as { RESPONSE_CACHE: KVNamespace }).RESPONSE_CACHE;
    const near = cacheApiStore(await caches.open(`near-${crypto.randomUUID()}`));
    const far = kvStore(kv);
    const stored = completion({ model: 'mistral-tiny', ...prompt('from afar') }, 7);
    await far.put('entry-from-elsewhere', stored, 120);
    expect(await near.get('entry-from-elsewhere')).toBeUndefined();
    expect(await tieredStore(near, far).get('entry-from-elsewhere')).toEqual(stored);
    expect(await near.get('entry-from-elsewhere')).toEqual(stored);
  });

  it('uses the RESPONSE_CACHE KV namespace when it is bound', async () => {
    const kv = (env as unknown as { RESPONSE_CACHE: KVNamespace }).RESPONSE_CACHE;
    const { send, calls } = cachedApp(jsonUpstream, { CACHE_TTL_SECONDS: '120', RESPONSE_CACHE: kv });
    const request = prompt();
    await send(request);
    const stored = await kv.list({ prefix: 'chat:' });
    expect(stored.keys.length).toBeGreaterThan(0);
    expect((await send(request)).cache).toBe('HIT');
    expect(calls()).toBe(1);
  });

  it('expires entries after CACHE_TTL_SECONDS, and "0" turns the cache off', async () => {
    const shortLived = cachedApp(jsonUpstream, { CACHE_TTL_SECONDS: '1' });
    const request = prompt();
    await shortLived.send(request);
    expect((await shortLived.send(request)).cache).toBe('HIT');
    await new Promise((resolve) => setTimeout(resolve, 2_100));
    expect((await shortLived.send(request)).cache).toBe('MISS');

    const off = cachedApp(jsonUpstream, { CACHE_TTL_SECONDS: '0' });
    await off.send(request);
    expect((await off.send(request)).cache).toBe('BYPASS');
  });

  it('rejects a malformed CACHE_TTL_SECONDS with an error naming the variable', async () => {
    expect(parseTtlSeconds(undefined)).toBe(600);
    expect(parseTtlSeconds('30')).toBe(30);
    expect(() => parseTtlSeconds('ten')).toThrow('CACHE_TTL_SECONDS must be a whole number of seconds ≥ 0, got "ten"');
    const { send } = cachedApp(jsonUpstream, { CACHE_TTL_SECONDS: '-5' });
    const response = await send(prompt());
    expect(response.status).toBe(500);
    expect(JSON.parse(response.body)).toMatchObject({ object: 'error', message: expect.stringContaining('CACHE_TTL_SECONDS') });
  });

  it('leaves invalid request bodies to the validator, uncached', async () => {
    const { send } = cachedApp(() => Response.json(errorBody('invalid_request_error', 'bad body'), { status: 422 }));
    const response = await send({ ...prompt(), temperature: 0, bogus: true } as Partial<ChatCompletionRequest>);
    expect(response).toMatchObject({ status: 422, cache: 'BYPASS' });
  });

  it('lets a request whose cache key cannot be computed through, uncached (BYPASS)', async () => {
    const app = new Hono<CacheTestEnv>();
    // A value JSON.stringify refuses (a BigInt) makes the key computation throw.
    const unkeyable = { model: 'mistral-tiny', temperature: 0, ...prompt(), response_format: { type: 'json_object', seed: 1n } };
    app.post(
      '/v1/chat/completions',
      responseCache<CacheTestEnv>({ tenant: () => 'acme', request: () => unkeyable as unknown as ChatCompletionRequest }),
      (c) => c.json(completion(unkeyable as unknown as ChatCompletionRequest, 1)),
    );
    const logged = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    const response = await app.fetch(new Request('https://edge.test/v1/chat/completions', { method: 'POST', body: '{}' }), {
      CACHE_TTL_SECONDS: '60',
    });
    expect(response.status).toBe(200);
    expect(response.headers.get('x-cache')).toBe('BYPASS');
    expect(logged).toHaveBeenCalledWith(expect.stringContaining('"operation":"key"'));
    logged.mockRestore();
  });
});
