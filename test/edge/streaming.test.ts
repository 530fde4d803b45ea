/**
 * SSE relay through the whole worker in workerd: one event per write, usage metered at the end,
 * mid-stream upstream failure as an error frame with no [DONE], keep-alive comments while the
 * sidecar is silent, and client aborts reaching the sidecar fetch. Sidecars are in-isolate fakes
 * (test/edge/fake-sidecar.ts); test/e2e/ runs the real ones.
 */
import { describe, expect, it } from 'vitest';
import { PARIS, readFrames, setup } from './harness.ts';

function dataOf(frame: string): unknown {
  expect(frame.startsWith('data: ')).toBe(true);
  const data = frame.slice('data: '.length);
  return data === '[DONE]' ? data : JSON.parse(data);
}

/** Reads from an SSE body until `predicate` holds for the text so far. */
async function readUntil(reader: ReadableStreamDefaultReader<Uint8Array>, predicate: (text: string) => boolean): Promise<string> {
  const decoder = new TextDecoder();
  let text = '';
  while (!predicate(text)) {
    const { done, value } = await reader.read();
    if (done) break;
    text += decoder.decode(value, { stream: true });
  }
  return text;
}

async function waitFor(condition: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe('streaming relay', () => {
  it('relays every chunk in order, ends with [DONE], and meters the usage of the last chunk', async () => {
    const edge = setup();
    const key = await edge.apiKey();
    const response = await edge.chat(key, { stream: true }, { cf: PARIS });
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const frames = (await readFrames(response)).map(dataOf);
    expect(frames).toHaveLength(5);
    expect(frames[0]).toMatchObject({ object: 'chat.completion.chunk', choices: [{ delta: { role: 'assistant', content: '' } }] });
    expect(frames[1]).toMatchObject({ choices: [{ delta: { content: 'Hello' } }] });
    expect(frames[3]).toMatchObject({ choices: [{ finish_reason: 'stop' }], usage: { total_tokens: 8 } });
    expect(frames[4]).toBe('[DONE]');
    await response.settled();
    expect(edge.usage).toEqual([{ prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 }]);
  });

  it('meters non-stream answers too', async () => {
    const edge = setup();
    const key = await edge.apiKey();
    const response = await edge.chat(key, {}, { cf: PARIS });
    await response.json();
    await response.settled();
    expect(edge.usage).toEqual([{ prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 }]);
  });

  it.each([
    ['the connection drops', 'cut-mid-stream', /connection reset/],
    ['the sidecar sends an error frame', 'error-mid-stream', /decoder crashed/],
  ] as const)('ends with an error frame and no [DONE] when %s mid-stream', async (_name, behaviour, message) => {
    const edge = setup();
    const key = await edge.apiKey();
    edge.sidecars.sidecar('eu-west').behaviour = behaviour;
    const response = await edge.chat(key, { stream: true }, { cf: PARIS });
    expect(response.status).toBe(200); // committed after the first chunk: never replayed elsewhere
    const frames = (await readFrames(response)).map(dataOf);
    expect(frames.slice(0, 2)).toMatchObject([
      { choices: [{ delta: { role: 'assistant' } }] },
      { choices: [{ delta: { content: 'Hello' } }] },
    ]);
    const last = frames.at(-1) as { object: string; type: string; message: string; error: { message: string } };
    expect(last).toMatchObject({ object: 'error', type: 'upstream_error', param: null, code: null });
    expect(last.message).toMatch(message);
    expect(frames).not.toContain('[DONE]');
    expect(edge.sidecars.sidecar('us-east').requests).toHaveLength(0);
    await response.settled();
    // No usage chunk came: what was streamed is recorded, one content chunk (edge/usage/streamed-tokens.ts).
    expect(edge.usage).toEqual([{ prompt_tokens: 0, completion_tokens: 1, total_tokens: 1 }]);
  });

  it('sends keep-alive comments while the sidecar is silent, then the rest of the stream', async () => {
    const edge = setup({ KEEP_ALIVE_MS: '40' });
    const key = await edge.apiKey();
    const eu = edge.sidecars.sidecar('eu-west');
    eu.behaviour = 'stall';
    const response = await edge.chat(key, { stream: true }, { cf: PARIS });
    const reader = response.body!.getReader();
    const beforeRelease = await readUntil(reader, (text) => text.split(': keep-alive\n\n').length > 3);
    expect(beforeRelease.startsWith('data: {')).toBe(true);
    eu.release();
    const rest = await readUntil(reader, (text) => text.includes('[DONE]'));
    expect(rest).toContain('from eu-west');
    expect(rest.trimEnd().endsWith('data: [DONE]')).toBe(true);
  });
});

async function circuitOf(edge: ReturnType<typeof setup>, region: string): Promise<string | undefined> {
  const health = (await (await edge.send('/health')).json()) as { regions: { region: string; circuit: string }[] };
  return health.regions.find((entry) => entry.region === region)?.circuit;
}

describe('a region that hangs', () => {
  it('mid-stream: one timeout frame after the idle timeout (its comments do not count), no [DONE], the sidecar fetch aborted and a failure on its circuit', async () => {
    const edge = setup({ STREAM_IDLE_TIMEOUT_MS: '300', KEEP_ALIVE_MS: '100', CIRCUIT_FAILURE_THRESHOLD: '1' });
    const key = await edge.apiKey();
    const eu = edge.sidecars.sidecar('eu-west');
    eu.behaviour = 'silent-mid-stream';
    const response = await edge.chat(key, { stream: true }, { cf: PARIS });
    expect(response.status).toBe(200);
    const reader = response.body!.getReader();
    const before = await readUntil(reader, (text) => text.includes('"content":"Hello"'));
    const silentSince = Date.now();
    const rest = await readUntil(reader, () => false);
    const elapsed = Date.now() - silentSince;
    expect(elapsed).toBeGreaterThanOrEqual(250);
    expect(elapsed).toBeLessThan(1_000);
    const frames = (before + rest).split('\n\n').filter(Boolean);
    const data = frames.filter((frame) => frame.startsWith('data: ')).map(dataOf);
    expect(data).toHaveLength(3);
    expect(data.at(-1)).toMatchObject({ object: 'error', type: 'timeout', error: { type: 'timeout' } });
    expect(frames).toContain(': keep-alive'); // the edge's own, while it waited
    expect(frames).not.toContain('data: [DONE]');
    await waitFor(() => eu.requests[0]?.signal?.aborted === true);
    expect(await circuitOf(edge, 'eu-west')).toBe('open');
    expect(edge.sidecars.sidecar('us-east').requests).toHaveLength(0);
  });

  it('before the first byte: the first-byte timeout fails over and counts a failure on the silent region', async () => {
    const edge = setup({ FIRST_BYTE_TIMEOUT_MS: '200', CIRCUIT_FAILURE_THRESHOLD: '1' });
    const key = await edge.apiKey();
    edge.sidecars.sidecar('eu-west').behaviour = 'hang';
    const started = Date.now();
    const response = await edge.chat(key, { stream: true }, { cf: PARIS });
    const text = await response.text();
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(text).toContain('from us-east');
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    expect(edge.sidecars.sidecar('eu-west').requests[0]?.signal?.aborted).toBe(true);
    expect(await circuitOf(edge, 'eu-west')).toBe('open');
  });
});

describe('a region that answers only after a long prefill', () => {
  it('gets keep-alives to the client before the first chunk, then the stream', async () => {
    const edge = setup({ KEEP_ALIVE_MS: '30' });
    const key = await edge.apiKey();
    edge.sidecars.sidecar('eu-west').startDelayMs = 200;
    const response = await edge.chat(key, { stream: true }, { cf: PARIS });
    expect(response.status).toBe(200);
    const frames = await readFrames(response);
    const firstData = frames.findIndex((frame) => frame.startsWith('data: '));
    expect(firstData).toBeGreaterThan(1);
    expect(frames.slice(0, firstData).every((frame) => frame === ': keep-alive')).toBe(true);
    expect(frames.slice(firstData).map(dataOf).at(-1)).toBe('[DONE]');
    expect(frames.join('')).toContain('from eu-west');
  });

  it('still fails over invisibly when the slow region then fails', async () => {
    const edge = setup({ KEEP_ALIVE_MS: '30' });
    const key = await edge.apiKey();
    const eu = edge.sidecars.sidecar('eu-west');
    eu.startDelayMs = 150;
    eu.behaviour = 'http-500';
    const frames = await readFrames(await edge.chat(key, { stream: true }, { cf: PARIS }));
    const data = frames.filter((frame) => frame.startsWith('data: ')).map(dataOf);
    expect(JSON.stringify(data)).toContain('from us-east');
    expect(data.at(-1)).toBe('[DONE]');
  });

  it('reports a refusal that comes after the commit as an error frame with the sidecar message, and no [DONE]', async () => {
    const edge = setup({ KEEP_ALIVE_MS: '30' });
    const key = await edge.apiKey();
    edge.sidecars.sidecar('eu-west').startDelayMs = 150;
    const frames = await readFrames(await edge.chat(key, { stream: true, max_tokens: 999_999 }, { cf: PARIS }));
    expect(frames[0]).toBe(': keep-alive');
    const last = dataOf(frames.at(-1) ?? '') as { object: string; type: string; message: string };
    expect(last).toMatchObject({ object: 'error', type: 'invalid_request_error', message: expect.stringMatching(/exceeds the context/) });
    expect(frames).not.toContain('data: [DONE]');
  });
});

describe('client abort', () => {
  it('cancelling the response body aborts the sidecar fetch', async () => {
    const edge = setup();
    const key = await edge.apiKey();
    const eu = edge.sidecars.sidecar('eu-west');
    eu.behaviour = 'stall';
    const response = await edge.chat(key, { stream: true }, { cf: PARIS });
    const reader = response.body!.getReader();
    await readUntil(reader, (text) => text.includes('"role":"assistant"'));
    const upstreamSignal = eu.requests[0]?.signal;
    expect(upstreamSignal?.aborted).toBe(false);
    await reader.cancel();
    await waitFor(() => upstreamSignal?.aborted === true);
  });

  it('a client that leaves during a long prefill gets the sidecar fetch aborted once it answers', async () => {
    const edge = setup({ KEEP_ALIVE_MS: '30' });
    const key = await edge.apiKey();
    const eu = edge.sidecars.sidecar('eu-west');
    eu.startDelayMs = 100;
    eu.behaviour = 'stall';
    const response = await edge.chat(key, { stream: true }, { cf: PARIS });
    const reader = response.body!.getReader();
    expect(await readUntil(reader, (text) => text.length > 0)).toBe(': keep-alive\n\n');
    await reader.cancel();
    await waitFor(() => eu.requests[0]?.signal?.aborted === true);
  });

  it('the request signal (enable_request_signal) aborts the sidecar fetch, without counting against the region', async () => {
    const edge = setup({ CIRCUIT_FAILURE_THRESHOLD: '1' });
    const key = await edge.apiKey();
    const eu = edge.sidecars.sidecar('eu-west');
    eu.behaviour = 'stall';
    const client = new AbortController();
    const response = await edge.chat(key, { stream: true }, { cf: PARIS, signal: client.signal });
    const reader = response.body!.getReader();
    await readUntil(reader, (text) => text.includes('"role":"assistant"'));
    client.abort();
    await waitFor(() => eu.requests[0]?.signal?.aborted === true);
    await new Promise((resolve) => setTimeout(resolve, 50)); // let the relay see its read fail
    const health = (await (await edge.send('/health')).json()) as { regions: { region: string; circuit: string }[] };
    expect(health.regions.find((region) => region.region === 'eu-west')?.circuit).toBe('closed');
  });

  it('a non-stream request whose client leaves while the sidecar is still writing aborts the sidecar fetch, counting nothing', async () => {
    const edge = setup({ CIRCUIT_FAILURE_THRESHOLD: '1' });
    const key = await edge.apiKey();
    const eu = edge.sidecars.sidecar('eu-west');
    eu.behaviour = 'hang-after-headers';
    const client = new AbortController();
    const pending = edge.chat(key, {}, { cf: PARIS, signal: client.signal });
    await waitFor(() => eu.requests.length === 1);
    const upstreamSignal = eu.requests[0]?.signal;
    expect(upstreamSignal?.aborted).toBe(false);
    client.abort();
    await waitFor(() => upstreamSignal?.aborted === true, 500);
    expect((await pending).status).toBe(499);
    expect(edge.sidecars.sidecar('us-east').requests).toHaveLength(0);
    const health = (await (await edge.send('/health')).json()) as { regions: { region: string; circuit: string }[] };
    expect(health.regions.find((region) => region.region === 'eu-west')?.circuit).toBe('closed');
  });

  it('a client gone before the first byte does not count against the region', async () => {
    const edge = setup({ CIRCUIT_FAILURE_THRESHOLD: '1' });
    const key = await edge.apiKey();
    const eu = edge.sidecars.sidecar('eu-west');
    eu.behaviour = 'hang';
    const client = new AbortController();
    const pending = edge.chat(key, {}, { cf: PARIS, signal: client.signal });
    await waitFor(() => eu.requests.length === 1);
    client.abort();
    const response = await pending;
    expect(response.status).toBe(499);
    expect(eu.requests[0]?.signal?.aborted).toBe(true);
    const health = (await (await edge.send('/health')).json()) as { regions: { region: string; circuit: string }[] };
    expect(health.regions.find((region) => region.region === 'eu-west')?.circuit).toBe('closed');
  });
});

describe('a non-stream request, answered from the sidecar stream the edge asks for', () => {
  it('gets the JSON a non-stream sidecar sends, field for field, and is metered', async () => {
    const edge = setup();
    const key = await edge.apiKey();
    const response = await edge.chat(key, {}, { cf: PARIS });
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^application\/json/);
    expect(await response.text()).toBe(
      JSON.stringify({
        id: 'cmpl-eu-west',
        object: 'chat.completion',
        created: 1_700_000_000,
        model: 'mistral-tiny',
        choices: [{ index: 0, message: { role: 'assistant', content: 'Hello from eu-west' }, finish_reason: 'stop' }],
        usage: { prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 },
      }),
    );
    expect(JSON.parse(edge.sidecars.sidecar('eu-west').requests[0]?.body ?? '{}')).toMatchObject({ stream: true });
    await response.settled();
    expect(edge.usage).toEqual([{ prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 }]);
  });

  it('keeps a response_format JSON answer byte for byte, however its deltas split it', async () => {
    const answer = '{"city": "Zürich", "quote": "a \\"b\\"\\n", "n": [1, 2]}';
    const pieces = [answer.slice(0, 7), answer.slice(7, 20), answer.slice(20)];
    const base = { id: 'cmpl-json', object: 'chat.completion.chunk', created: 1_700_000_001, model: 'mistral-tiny' };
    const chunks = [
      { ...base, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] },
      ...pieces.map((content) => ({ ...base, choices: [{ index: 0, delta: { content }, finish_reason: null }] })),
      {
        ...base,
        choices: [{ index: 0, delta: { content: '' }, finish_reason: 'stop' }],
        usage: { prompt_tokens: 9, completion_tokens: 4, total_tokens: 13 },
      },
    ];
    const sse = `${chunks.map((chunk) => `data: ${JSON.stringify(chunk)}\n\n`).join('')}data: [DONE]\n\n`;
    const edge = setup({}, { wrapFetch: () => async () => new Response(sse, { headers: { 'content-type': 'text/event-stream' } }) });
    const key = await edge.apiKey();
    const response = await edge.chat(key, { response_format: { type: 'json_object' } }, { cf: PARIS });
    expect(response.status).toBe(200);
    const body = (await response.json()) as { choices: { message: { content: string } }[] };
    expect(body).toEqual({
      id: 'cmpl-json',
      object: 'chat.completion',
      created: 1_700_000_001,
      model: 'mistral-tiny',
      choices: [{ index: 0, message: { role: 'assistant', content: answer }, finish_reason: 'stop' }],
      usage: { prompt_tokens: 9, completion_tokens: 4, total_tokens: 13 },
    });
    expect(JSON.parse(body.choices[0]?.message.content ?? '')).toEqual({ city: 'Zürich', quote: 'a "b"\n', n: [1, 2] });
  });

  it('gets a 504 timeout error JSON when the region goes silent mid-generation, the fetch aborted and a failure on its circuit', async () => {
    const edge = setup({ STREAM_IDLE_TIMEOUT_MS: '300', COMPLETION_TIMEOUT_MS: '10000', CIRCUIT_FAILURE_THRESHOLD: '1' });
    const key = await edge.apiKey();
    const eu = edge.sidecars.sidecar('eu-west');
    eu.behaviour = 'silent-mid-stream';
    const started = Date.now();
    const response = await edge.chat(key, {}, { cf: PARIS });
    const elapsed = Date.now() - started;
    expect(response.status).toBe(504);
    expect(await response.json()).toMatchObject({ object: 'error', type: 'timeout', message: expect.stringMatching(/no data .* 300 ms/) });
    expect(elapsed).toBeGreaterThanOrEqual(250);
    expect(elapsed).toBeLessThan(1_000);
    expect(eu.requests[0]?.signal?.aborted).toBe(true);
    expect(await circuitOf(edge, 'eu-west')).toBe('open');
    expect(edge.sidecars.sidecar('us-east').requests).toHaveLength(0);
    await response.settled();
    expect(edge.usage).toEqual([]);
  });

  it('fails over to the next region when the first sends no first token within FIRST_BYTE_TIMEOUT_MS', async () => {
    const edge = setup({ FIRST_BYTE_TIMEOUT_MS: '200', COMPLETION_TIMEOUT_MS: '10000', CIRCUIT_FAILURE_THRESHOLD: '1' });
    const key = await edge.apiKey();
    edge.sidecars.sidecar('eu-west').behaviour = 'hang';
    const started = Date.now();
    const response = await edge.chat(key, {}, { cf: PARIS });
    const elapsed = Date.now() - started;
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({ choices: [{ message: { content: 'Hello from us-east' } }] });
    expect(elapsed).toBeGreaterThanOrEqual(150);
    expect(elapsed).toBeLessThan(1_000);
    expect(edge.sidecars.sidecar('eu-west').requests[0]?.signal?.aborted).toBe(true);
    expect(await circuitOf(edge, 'eu-west')).toBe('open');
  });

  it.each([
    ['the connection drops', 'cut-mid-stream', /connection reset/],
    ['the sidecar sends an error frame', 'error-mid-stream', /decoder crashed/],
  ] as const)('gets a 502 upstream_error JSON and a failure on the circuit when %s mid-generation', async (_name, behaviour, message) => {
    const edge = setup({ CIRCUIT_FAILURE_THRESHOLD: '1' });
    const key = await edge.apiKey();
    edge.sidecars.sidecar('eu-west').behaviour = behaviour;
    const response = await edge.chat(key, {}, { cf: PARIS });
    expect(response.status).toBe(502);
    expect(await response.json()).toMatchObject({ object: 'error', type: 'upstream_error', message });
    expect(await circuitOf(edge, 'eu-west')).toBe('open');
  });

  it('gets a 504 when the answer is not done within COMPLETION_TIMEOUT_MS (before any idle timeout), counting nothing against the region', async () => {
    const edge = setup({ COMPLETION_TIMEOUT_MS: '300', FIRST_BYTE_TIMEOUT_MS: '2000', CIRCUIT_FAILURE_THRESHOLD: '1' });
    const key = await edge.apiKey();
    const eu = edge.sidecars.sidecar('eu-west');
    eu.behaviour = 'stall';
    const started = Date.now();
    const response = await edge.chat(key, {}, { cf: PARIS });
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(response.status).toBe(504);
    expect(await response.json()).toMatchObject({ object: 'error', type: 'timeout', message: expect.stringMatching(/300 ms/) });
    expect(eu.requests[0]?.signal?.aborted).toBe(true);
    expect(await circuitOf(edge, 'eu-west')).toBe('closed');
  });

  it('relays a sidecar 400 before the first token as is', async () => {
    const edge = setup();
    const key = await edge.apiKey();
    edge.sidecars.sidecar('eu-west').behaviour = 'http-400';
    const response = await edge.chat(key, {}, { cf: PARIS });
    expect(response.status).toBe(400);
    expect(await response.json()).toMatchObject({ object: 'error', type: 'invalid_request_error', param: 'messages' });
    expect(edge.sidecars.sidecar('us-east').requests).toHaveLength(0);
  });
});
