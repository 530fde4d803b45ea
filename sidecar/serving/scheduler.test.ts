/**
 * The continuous-batching scheduler on the real demo model (onnxruntime, int4): requests share
 * decode steps, a long prompt is prefilled in chunks while another request keeps decoding, seeded
 * requests give the same text alone and batched, cancellation releases the sequence's KV cache at
 * the next step, and admission control answers 400/503 synchronously.
 */

import { mkdirSync } from 'node:fs';
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureDemoModels } from '../convert/demo-model.ts';
import { loadModel, type ModelRuntime, type Sequence } from '../engine/index.ts';
import { SidecarError } from '../errors.ts';
import { loadTokenizer, type Tokenizer } from '../text/tokenizer.ts';
import type { GenerateEvent } from './decoder.ts';
import { Scheduler, type SchedulerObserver } from './scheduler.ts';

let runtime: ModelRuntime;
let tokenizer: Tokenizer;
const live = new Set<number>();
/** Every sequence created, in order, and an optional spy on each forward step. */
const created: Sequence[] = [];
let onForward: ((batch: Array<{ sequence: Sequence; tokens: number[] }>) => void) | undefined;
const previousHome = process.env.SIROCCO_HOME;

beforeAll(async () => {
  const home = resolve(import.meta.dirname, '../../test/.tmp/home');
  mkdirSync(home, { recursive: true });
  process.env.SIROCCO_HOME = home;
  const dirs = await ensureDemoModels();
  const real = await loadModel(dirs['mistral-tiny'], { threads: 1 });
  tokenizer = await loadTokenizer(real.dir, real.info.vocabSize);
  // The real runtime, watched: which sequences hold KV memory right now.
  runtime = {
    info: real.info,
    dir: real.dir,
    createSequence() {
      const sequence = real.createSequence();
      live.add(sequence.id);
      created.push(sequence);
      return sequence;
    },
    forward: (batch, options) => {
      onForward?.(batch);
      return real.forward(batch, options);
    },
    releaseSequence(sequence: Sequence) {
      live.delete(sequence.id);
      real.releaseSequence(sequence);
    },
    dispose: () => real.dispose(),
  };
}, 120_000);
afterAll(async () => {
  await runtime?.dispose();
  // Workers are reused across test files: leave the environment as we found it.
  if (previousHome === undefined) delete process.env.SIROCCO_HOME;
  else process.env.SIROCCO_HOME = previousHome;
});

function prompt(text: string): number[] {
  return [tokenizer.bosId, ...tokenizer.encode(`[INST] ${text} [/INST]`)];
}

async function collect(events: AsyncIterable<GenerateEvent>): Promise<{ text: string; done: Extract<GenerateEvent, { type: 'done' }> }> {
  let text = '';
  for await (const event of events) {
    if (event.type === 'text') text += event.text;
    else return { text, done: event };
  }
  throw new Error('no done event');
}

function scheduler(options: Partial<ConstructorParameters<typeof Scheduler>[0]> = {}) {
  return new Scheduler({ runtime, tokenizer, maxBatch: 4, maxQueue: 4, ...options });
}

describe('batching', () => {
  it('runs concurrent requests in shared decode steps and ends each with usage', async () => {
    const steps: number[] = [];
    const observer: SchedulerObserver = { step: ({ decodeEntries }) => steps.push(decodeEntries) };
    const s = scheduler({ observer });
    const results = await Promise.all(
      [1, 2, 3].map((seed) => collect(s.submit({ promptIds: prompt(`Hello ${seed}`), maxTokens: 12, temperature: 1, topP: 1, seed }))),
    );
    for (const { done } of results) {
      expect(done.completionTokens).toBeGreaterThan(0);
      expect(done.completionTokens).toBeLessThanOrEqual(12);
      expect(done.promptTokens).toBe(prompt('Hello 1').length);
    }
    expect(Math.max(...steps)).toBe(3);
    await s.whenIdle();
    expect(live.size).toBe(0);
  });

  it('prefills a long prompt in chunks while another request keeps decoding', async () => {
    const steps: Array<{ decodeEntries: number; prefillTokens: number }> = [];
    const s = scheduler({ prefillChunkTokens: 16, observer: { step: (info) => steps.push(info) } });
    const running = s.submit({ promptIds: prompt('Short'), maxTokens: 40, temperature: 0, topP: 1 });
    await running.next(); // decoding now
    const longPrompt = prompt('word '.repeat(100));
    const long = collect(s.submit({ promptIds: longPrompt, maxTokens: 2, temperature: 0, topP: 1 }));
    await Promise.all([collect(running), long]);
    const prefillSteps = steps.filter((step) => step.prefillTokens > 0 && step.decodeEntries === 0);
    const longPrefill = prefillSteps.filter((step) => step.prefillTokens <= 16);
    // The long prompt went in 16-token pieces, each right after a decode step of the running request.
    expect(longPrefill.length).toBeGreaterThanOrEqual(Math.floor(longPrompt.length / 16));
    expect(Math.max(...prefillSteps.slice(1).map((step) => step.prefillTokens))).toBeLessThanOrEqual(16);
  });

  it('gives a seeded request the same text alone and with others joining its batch', async () => {
    const s = scheduler();
    const request = {
      promptIds: prompt('Tell me about the moon and the stars at night'),
      maxTokens: 32,
      temperature: 0.9,
      topP: 0.95,
      seed: 7,
    };
    const alone = await collect(s.submit(request));
    const probe = s.submit(request);
    const first = await probe.next();
    const others = [1, 2].map((seed) => collect(s.submit({ promptIds: prompt(`x${seed}`), maxTokens: 20, temperature: 1, topP: 1, seed })));
    const rest = await collect(probe);
    await Promise.all(others);
    const head = first.value?.type === 'text' ? first.value.text : '';
    expect(head + rest.text).toBe(alone.text);
    expect(rest.done).toEqual(alone.done);
  });

  it('gives a seeded request the same text when its batchmates hold much longer KV caches', async () => {
    const s = scheduler({ maxBatch: 3 });
    const request = { promptIds: prompt('Tell me about the moon'), maxTokens: 40, temperature: 0.9, topP: 0.95, seed: 11 };
    const alone = await collect(s.submit(request));
    // Two long-running requests with long prompts: their caches stay ≥ 100 tokens ahead of the probe's.
    const longStreams = [1, 2].map((seed) =>
      s.submit({ promptIds: prompt(`story ${'word '.repeat(110 + 20 * seed)}`), maxTokens: 60, temperature: 1, topP: 1, seed }),
    );
    await Promise.all(longStreams.map((stream) => stream.next())); // both decoding
    let gap = 0;
    const probe = s.submit(request);
    const first = await probe.next();
    const probeSequence = created.at(-1);
    if (!probeSequence) throw new Error('the probe created no sequence');
    onForward = (batch) => {
      if (batch.length < 2 || !batch.some((e) => e.sequence === probeSequence)) return;
      gap = Math.max(gap, ...batch.map((e) => e.sequence.length - probeSequence.length));
    };
    try {
      const rest = await collect(probe);
      const head = first.value?.type === 'text' ? first.value.text : '';
      expect(head + rest.text).toBe(alone.text);
      expect(rest.done).toEqual(alone.done);
    } finally {
      onForward = undefined;
      await Promise.all(longStreams.map((stream) => collect(stream)));
    }
    expect(gap).toBeGreaterThan(100); // the probe really shared steps with longer caches
  });
});

describe('cancellation', () => {
  it('fails only the request the engine rejects and keeps its batchmates going, with unchanged text', async () => {
    // Stand-in for a missing expert file that only one request's tokens route to (the dense demo
    // model has no experts): forward rejects every batch that holds the victim's sequence.
    const s = scheduler();
    const request = { promptIds: prompt('Tell me about rivers'), maxTokens: 16, temperature: 1, topP: 1, seed: 11 };
    const alone = await collect(s.submit(request));
    const first = created.length;
    const batchSizes: number[] = [];
    onForward = (batch) => {
      batchSizes.push(batch.length);
      if (batch.some((entry) => entry.sequence === created[first]))
        throw new SidecarError('model_error', 'cannot read expert file L1-E6.bin: ENOENT');
    };
    try {
      const victim = collect(s.submit({ promptIds: prompt('Victim'), maxTokens: 16, temperature: 0, topP: 1 }));
      const same = collect(s.submit(request));
      const other = collect(s.submit({ promptIds: prompt('Another one'), maxTokens: 8, temperature: 0, topP: 1 }));
      await expect(victim).rejects.toThrow(/L1-E6\.bin: ENOENT/);
      expect((await same).text).toBe(alone.text);
      expect((await other).done.completionTokens).toBeGreaterThan(0);
      expect(batchSizes[0]).toBe(3); // the three prompts did share the failing step
    } finally {
      onForward = undefined;
    }
  });

  it('releases the KV cache of an aborted request at the next step and keeps serving the others', async () => {
    const s = scheduler();
    const controller = new AbortController();
    const victim = s.submit({ promptIds: prompt('Go on forever'), maxTokens: 2000, temperature: 0, topP: 1, signal: controller.signal });
    const other = collect(s.submit({ promptIds: prompt('Other'), maxTokens: 30, temperature: 0, topP: 1 }));
    await victim.next();
    expect(s.stats().activeSequences).toBe(2);
    controller.abort();
    expect((await victim.next()).done).toBe(true);
    await expect.poll(() => s.stats().activeSequences).toBe(1);
    expect((await other).done.completionTokens).toBeGreaterThan(0);
    await s.whenIdle();
    expect(live.size).toBe(0);
  });

  it('cancels when the consumer stops iterating', async () => {
    const s = scheduler();
    for await (const event of s.submit({ promptIds: prompt('Break early'), maxTokens: 2000, temperature: 0, topP: 1 })) {
      if (event.type === 'text') break;
    }
    await s.whenIdle();
    expect(live.size).toBe(0);
  });
});

describe('admission control', () => {
  it('rejects prompts that do not fit the context with 400, before any work', () => {
    const s = scheduler();
    const tooLong = Array.from({ length: runtime.info.contextLength }, () => 100);
    expect(() => s.submit({ promptIds: tooLong, temperature: 0, topP: 1 })).toThrow(/context length/);
    try {
      s.submit({ promptIds: prompt('Hi'), maxTokens: runtime.info.contextLength, temperature: 0, topP: 1 });
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(SidecarError);
      expect(error).toMatchObject({ status: 400, param: 'max_tokens' });
    }
  });

  it('queues beyond maxBatch and answers 503 with a retry hint beyond maxQueue', async () => {
    const s = scheduler({ maxBatch: 1, maxQueue: 1 });
    const controller = new AbortController();
    const running = s.submit({ promptIds: prompt('One'), maxTokens: 2000, temperature: 0, topP: 1, signal: controller.signal });
    const queued = collect(s.submit({ promptIds: prompt('Two'), maxTokens: 2, temperature: 0, topP: 1 }));
    try {
      s.submit({ promptIds: prompt('Three'), maxTokens: 2, temperature: 0, topP: 1 });
      expect.unreachable();
    } catch (error) {
      expect(error).toMatchObject({ status: 503, type: 'overloaded' });
      expect((error as SidecarError).retryAfterSeconds).toBeGreaterThanOrEqual(1);
    }
    await running.next();
    expect(s.stats()).toMatchObject({ activeSequences: 1, queueDepth: 1 });
    controller.abort();
    expect((await queued).done.completionTokens).toBeGreaterThan(0);
    await s.whenIdle();
  });

  it('refuses new work once shutting down and lets running work finish', async () => {
    const s = scheduler();
    const running = collect(s.submit({ promptIds: prompt('Finish'), maxTokens: 8, temperature: 0, topP: 1 }));
    const stopped = s.shutdown(10_000);
    expect(() => s.submit({ promptIds: prompt('Late'), maxTokens: 2, temperature: 0, topP: 1 })).toThrow(/shutting down/);
    expect((await running).done.completionTokens).toBeGreaterThan(0);
    await stopped;
  });
});
