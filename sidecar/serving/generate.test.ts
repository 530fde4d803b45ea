import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertCheckpoint } from '../convert/convert.ts';
import { writeDemoCheckpoint } from '../convert/demo-model.ts';
import { loadModel, type ModelRuntime, type Sequence } from '../engine/index.ts';
import { SidecarError } from '../errors.ts';
import { argmax } from '../sampling/sampler.ts';
import { renderChatPrompt } from '../text/chat-template.ts';
import { loadTokenizer, type Tokenizer } from '../text/tokenizer.ts';
import type { GenerateEvent } from './decoder.ts';
import { type GenerateOptions, generate } from './generate.ts';
import { Scheduler } from './scheduler.ts';

// The demo Mistral (random weights, real vocabulary) converted at fp32, so that greedy choices
// can be checked against a plain forward pass without quantisation noise.
let root: string;
let runtime: ModelRuntime;
let tokenizer: Tokenizer;
let prompt: number[];

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'sirocco-generate-'));
  await writeDemoCheckpoint('mistral-tiny', join(root, 'checkpoint'));
  await convertCheckpoint({ from: join(root, 'checkpoint'), to: join(root, 'store'), precision: 'fp32' });
  runtime = await loadModel(join(root, 'store'));
  tokenizer = await loadTokenizer(runtime.dir, runtime.info.vocabSize);
  prompt = renderChatPrompt(tokenizer, [{ role: 'user', content: 'Tell me about the wind.' }]);
});
afterAll(async () => {
  await runtime?.dispose();
  await rm(root, { recursive: true, force: true });
});

const GREEDY = { maxTokens: 12, temperature: 0, topP: 1 } satisfies GenerateOptions;

async function collect(events: AsyncGenerator<GenerateEvent>) {
  let text = '';
  let done: Extract<GenerateEvent, { type: 'done' }> | undefined;
  for await (const event of events) {
    if (event.type === 'text') text += event.text;
    else done = event;
  }
  return { text, done: done! };
}

/** The real runtime, with its info or its logits altered to reach code paths the random model rarely takes. */
function adapted(base: ModelRuntime, changes: { contextLength?: number; eosAfterSteps?: number; released?: Sequence[] }): ModelRuntime {
  let steps = 0;
  return {
    info: { ...base.info, contextLength: changes.contextLength ?? base.info.contextLength },
    dir: base.dir,
    createSequence: () => base.createSequence(),
    releaseSequence: (sequence) => {
      changes.released?.push(sequence);
      base.releaseSequence(sequence);
    },
    dispose: () => base.dispose(),
    async forward(batch, options) {
      const rows = await base.forward(batch, options);
      if (changes.eosAfterSteps !== undefined && ++steps > changes.eosAfterSteps) rows[0]![base.info.eosId] = 1e9;
      return rows;
    },
  };
}

describe('generate', () => {
  it('decodes greedily with the KV cache exactly as full forward passes over the growing text would', async () => {
    const generated = await collect(generate(runtime, tokenizer, prompt, GREEDY));
    // Recompute each choice from scratch: a new sequence, one forward over prompt + choices so far.
    const expected: number[] = [];
    for (let i = 0; i < GREEDY.maxTokens; i++) {
      const fresh = runtime.createSequence();
      try {
        const [logits] = await runtime.forward([{ sequence: fresh, tokens: [...prompt, ...expected] }]);
        expected.push(argmax(logits!));
      } finally {
        runtime.releaseSequence(fresh);
      }
    }
    expect(generated.text).toBe(tokenizer.decode(expected));
    expect(generated.done).toEqual({
      type: 'done',
      finishReason: 'length',
      promptTokens: prompt.length,
      completionTokens: GREEDY.maxTokens,
    });
  });

  it('stops at max_tokens with finish_reason "length"', async () => {
    const { done } = await collect(generate(runtime, tokenizer, prompt, { ...GREEDY, maxTokens: 3 }));
    expect(done).toMatchObject({ finishReason: 'length', completionTokens: 3 });
  });

  it('depends on the prompt', async () => {
    const other = renderChatPrompt(tokenizer, [{ role: 'user', content: 'Write a haiku about stones.' }]);
    const a = await collect(generate(runtime, tokenizer, prompt, GREEDY));
    const b = await collect(generate(runtime, tokenizer, other, GREEDY));
    expect(a.text).not.toBe(b.text);
  });

  it('reproduces sampled text for the same random_seed', async () => {
    const sampled = { maxTokens: 16, temperature: 0.8, topP: 0.95, seed: 42 };
    const first = await collect(generate(runtime, tokenizer, prompt, sampled));
    expect((await collect(generate(runtime, tokenizer, prompt, sampled))).text).toBe(first.text);
    expect((await collect(generate(runtime, tokenizer, prompt, { ...sampled, seed: 43 }))).text).not.toBe(first.text);
  });

  it('ends at a stop string with finish_reason "stop", without emitting it', async () => {
    const { text } = await collect(generate(runtime, tokenizer, prompt, { ...GREEDY, maxTokens: 16 }));
    const stop = text.slice(Math.floor(text.length / 2), Math.floor(text.length / 2) + 3);
    const stopped = await collect(generate(runtime, tokenizer, prompt, { ...GREEDY, maxTokens: 16, stop: [stop] }));
    expect(stopped.text).toBe(text.slice(0, text.indexOf(stop)));
    expect(stopped.done.finishReason).toBe('stop');
    expect(stopped.done.completionTokens).toBeLessThan(16);
  });

  it('ends at EOS with finish_reason "stop", counting EOS as a completion token', async () => {
    const { text, done } = await collect(generate(adapted(runtime, { eosAfterSteps: 3 }), tokenizer, prompt, GREEDY));
    // Prefill and two decode steps give three tokens; the fourth choice is EOS.
    expect(done).toMatchObject({ finishReason: 'stop', completionTokens: 4 });
    const { text: firstThree } = await collect(generate(runtime, tokenizer, prompt, { ...GREEDY, maxTokens: 3 }));
    expect(text).toBe(firstThree);
  });

  it('without max_tokens, ends with "length" where the context ends', async () => {
    const { maxTokens: _, ...unbounded } = GREEDY;
    const { done } = await collect(generate(adapted(runtime, { contextLength: prompt.length + 5 }), tokenizer, prompt, unbounded));
    expect(done).toMatchObject({ finishReason: 'length', completionTokens: 5 });
  });

  it('stops when aborted and always releases its sequence', async () => {
    const released: Sequence[] = [];
    const controller = new AbortController();
    const events = generate(adapted(runtime, { released }), tokenizer, prompt, { ...GREEDY, maxTokens: 50, signal: controller.signal });
    let received = 0;
    await expect(
      (async () => {
        for await (const event of events) {
          if (event.type === 'text' && ++received === 2) controller.abort();
        }
      })(),
    ).rejects.toMatchObject({ name: 'AbortError' });
    expect(released).toHaveLength(1);

    // A consumer that stops reading early releases it too.
    for await (const event of generate(adapted(runtime, { released }), tokenizer, prompt, GREEDY)) if (event.type === 'text') break;
    expect(released).toHaveLength(2);
  });

  it.each<[string, () => Partial<GenerateOptions> & { prompt?: number[] }, string, RegExp]>([
    ['max_tokens 0', () => ({ maxTokens: 0 }), 'max_tokens', /max_tokens must be a positive integer/],
    ['an empty prompt', () => ({ prompt: [] }), 'messages', /prompt is empty/],
    [
      'a prompt as long as the context',
      () => ({ prompt: new Array<number>(runtime.info.contextLength).fill(5) }),
      'messages',
      /context length is/,
    ],
    ['max_tokens past the context', () => ({ maxTokens: runtime.info.contextLength }), 'max_tokens', /exceeds the model's context length/],
    ['a stop that is not a list of strings', () => ({ stop: [3] as unknown as string[] }), 'stop', /stop must be a list of strings/],
    ['a negative temperature', () => ({ temperature: -0.5 }), 'temperature', /temperature/],
  ])('rejects %s before any model work', async (_, change, param, pattern) => {
    const { prompt: ids = prompt, ...options } = change();
    const error = await collect(generate(runtime, tokenizer, ids, { ...GREEDY, ...options })).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(SidecarError);
    expect(error).toMatchObject({ type: 'invalid_request_error', param });
    expect((error as Error).message).toMatch(pattern);
  });
});

describe('generate and the sidecar scheduler decode alike', () => {
  it('give the same text and usage for the same seeded request', async () => {
    const request = { maxTokens: 16, temperature: 1, topP: 0.9, seed: 42, stop: ['.'] };
    const scheduler = new Scheduler({ runtime, tokenizer, maxBatch: 4, maxQueue: 4 });
    const served = await collect(scheduler.submit({ ...request, promptIds: prompt }));
    const alone = await collect(generate(runtime, tokenizer, prompt, request));
    expect(alone).toEqual(served);
  });

  it('give the same error for the same bad request', async () => {
    const scheduler = new Scheduler({ runtime, tokenizer, maxBatch: 4, maxQueue: 4 });
    const request = { ...GREEDY, maxTokens: runtime.info.contextLength };
    const servedError = (() => {
      try {
        scheduler.submit({ ...request, promptIds: prompt });
      } catch (error) {
        return error;
      }
    })();
    const aloneError = await collect(generate(runtime, tokenizer, prompt, request)).catch((error: unknown) => error);
    expect(servedError).toBeInstanceOf(SidecarError);
    expect(aloneError).toEqual(servedError);
    expect(aloneError).toMatchObject({ param: 'max_tokens', status: 400 });
  });
});
