/**
 * Backpressure and cancellation on a real sidecar with two batch slots and a one-request queue:
 * overflow gets 503 with Retry-After, a client that disconnects frees its slot within a step (the
 * queued request starts, the load report drops), and killing one stream mid-way leaves the others'
 * text exactly what it would have been.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MistralErrorBodySchema } from '../../shared/errors.ts';
import { type LoadReport, LoadReportSchema } from '../../shared/protocol.ts';
import { readSseEvents } from '../../shared/sse.ts';
import { chatRequest, postChat, readStream, type SidecarProcess, startSidecarProcess } from '../support/sidecar-process.ts';

let sidecar: SidecarProcess;
beforeAll(async () => {
  sidecar = await startSidecarProcess({ args: ['--max-batch', '2', '--max-queue', '1'] });
});
afterAll(async () => {
  expect(await sidecar?.stop()).toBe(0);
});

async function loadReport(): Promise<LoadReport> {
  return LoadReportSchema.parse(await (await fetch(`${sidecar.url}/ready`)).json());
}

/** A greedy stream long enough (thousands of tokens) that it only ends when the test cancels it. */
async function openLongStream(label: string) {
  const controller = new AbortController();
  const response = await postChat(sidecar.url, chatRequest(`Keep talking, ${label}`, { stream: true, max_tokens: 6000, temperature: 0 }), {
    signal: controller.signal,
  });
  expect(response.status).toBe(200);
  const events = readSseEvents(response.body!);
  // The role chunk, then a content chunk: the request is decoding.
  await events.next();
  await events.next();
  return { cancel: () => controller.abort(), events };
}

describe('admission control', () => {
  it('queues beyond the batch, answers 503 with Retry-After beyond the queue, and frees slots on disconnect', async () => {
    const first = await openLongStream('first');
    const second = await openLongStream('second');
    await expect.poll(loadReport).toMatchObject({ activeSequences: 2, queueDepth: 0 });

    const queuedController = new AbortController();
    const queued = postChat(sidecar.url, chatRequest('Queued', { stream: true, max_tokens: 6000, temperature: 0 }), {
      signal: queuedController.signal,
    });
    await expect.poll(loadReport).toMatchObject({ activeSequences: 2, queueDepth: 1 });

    const rejected = await postChat(sidecar.url, chatRequest('One too many', { max_tokens: 2 }));
    expect(rejected.status).toBe(503);
    const retryAfter = Number(rejected.headers.get('retry-after'));
    expect(Number.isInteger(retryAfter)).toBe(true);
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThanOrEqual(60);
    expect(Number(rejected.headers.get('retry-after-ms'))).toBe(retryAfter * 1000);
    expect(MistralErrorBodySchema.parse(await rejected.json()).type).toBe('overloaded');

    // The first client goes away: its slot goes to the queued request.
    first.cancel();
    const queuedResponse = await queued;
    expect(queuedResponse.status).toBe(200);
    const queuedEvents = readSseEvents(queuedResponse.body!);
    await queuedEvents.next();
    await queuedEvents.next();
    await expect.poll(loadReport).toMatchObject({ activeSequences: 2, queueDepth: 0 });

    second.cancel();
    queuedController.abort();
    await expect.poll(loadReport).toMatchObject({ activeSequences: 0, queueDepth: 0 });
    const metrics = await (await fetch(`${sidecar.url}/metrics`)).text();
    expect(metrics).toMatch(/sirocco_generations_total\{model="mistral-tiny",reason="cancelled"\} 3/);
    expect(metrics).toMatch(/sirocco_requests_total\{route="\/v1\/chat\/completions",status="503"\} 1/);
  });

  it('cancels a queued request that disconnects before it gets a slot', async () => {
    const first = await openLongStream('a');
    const second = await openLongStream('b');
    const controller = new AbortController();
    const queued = postChat(sidecar.url, chatRequest('Give up', { max_tokens: 4 }), { signal: controller.signal }).catch(
      (error: unknown) => error,
    );
    await expect.poll(loadReport).toMatchObject({ queueDepth: 1 });
    controller.abort();
    expect(await queued).toBeInstanceOf(Error);
    await expect.poll(loadReport).toMatchObject({ queueDepth: 0, activeSequences: 2 });
    // The freed queue place is usable again.
    const next = postChat(sidecar.url, chatRequest('My turn', { max_tokens: 2 }));
    await expect.poll(loadReport).toMatchObject({ queueDepth: 1 });
    first.cancel();
    second.cancel();
    expect((await next).status).toBe(200);
  });
});

describe('a client killed mid-stream', () => {
  it('leaves the stream it shared the batch with intact, word for word', async () => {
    const survivorRequest = chatRequest('I will survive', { stream: true, max_tokens: 150, temperature: 0.8, random_seed: 99 });
    const alone = await readStream(await postChat(sidecar.url, survivorRequest));
    expect(alone.sawDone).toBe(true);

    // The survivor starts first, so its KV cache stays the longest in the batch and its rows are
    // never padded (see the report on padding noise); the victim joins, then its client is killed.
    const survivorResponse = await postChat(sidecar.url, survivorRequest);
    const survivorEvents = readSseEvents(survivorResponse.body!);
    const firstEvents = [(await survivorEvents.next()).value, (await survivorEvents.next()).value];
    const victim = await openLongStream('victim');
    expect((await loadReport()).activeSequences).toBe(2);
    victim.cancel();

    let text = '';
    let last: Record<string, unknown> = {};
    let sawDone = false;
    for (const event of firstEvents) text += JSON.parse(event!.data).choices[0].delta.content ?? '';
    for await (const event of survivorEvents) {
      if (event.data === '[DONE]') {
        sawDone = true;
        continue;
      }
      last = JSON.parse(event.data) as Record<string, unknown>;
      text += (last.choices as Array<{ delta: { content?: string } }>)[0]!.delta.content ?? '';
    }
    expect(sawDone).toBe(true);
    expect(text).toBe(alone.text);
    expect(last.usage).toEqual(alone.chunks.at(-1)!.usage);
    await expect.poll(loadReport).toMatchObject({ activeSequences: 0 });
    expect(sidecar.logs.some((line) => line.msg === 'generation cancelled')).toBe(true);
  });
});
