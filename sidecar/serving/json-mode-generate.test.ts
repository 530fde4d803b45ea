/**
 * The single-sequence generate() (the CLI's path) honours JSON mode like the scheduler: on the demo
 * model (random weights, real vocabulary) the text is a JSON object, or the schema's shape, and
 * generation stops with finish_reason "stop" as the object closes.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertCheckpoint } from '../convert/convert.ts';
import { writeDemoCheckpoint } from '../convert/demo-model.ts';
import { loadModel, type ModelRuntime } from '../engine/index.ts';
import { renderChatPrompt } from '../text/chat-template.ts';
import { loadTokenizer, type Tokenizer } from '../text/tokenizer.ts';
import type { GenerateEvent } from './decoder.ts';
import { type GenerateOptions, generate } from './generate.ts';

let root: string;
let runtime: ModelRuntime;
let tokenizer: Tokenizer;
let prompt: number[];

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'sirocco-json-generate-'));
  await writeDemoCheckpoint('mistral-tiny', join(root, 'checkpoint'));
  await convertCheckpoint({ from: join(root, 'checkpoint'), to: join(root, 'store'), precision: 'int8' });
  runtime = await loadModel(join(root, 'store'));
  tokenizer = await loadTokenizer(runtime.dir, runtime.info.vocabSize);
  prompt = renderChatPrompt(tokenizer, [{ role: 'user', content: 'Reply in JSON' }]);
});
afterAll(async () => {
  await runtime?.dispose();
  await rm(root, { recursive: true, force: true });
});

async function collect(options: GenerateOptions) {
  let text = '';
  let done: Extract<GenerateEvent, { type: 'done' }> | undefined;
  for await (const event of generate(runtime, tokenizer, prompt, options)) {
    if (event.type === 'text') text += event.text;
    else done = event;
  }
  return { text, done: done! };
}

describe('generate() in JSON mode', () => {
  it.each([
    [0, 1],
    [1, 2],
  ])('at temperature %s (seed %s) yields a JSON object and stops when it closes', async (temperature, seed) => {
    const { text, done } = await collect({ maxTokens: 20, temperature, topP: 1, seed, jsonMode: true });
    const value: unknown = JSON.parse(text);
    expect(value).toBeTypeOf('object');
    expect(Array.isArray(value)).toBe(false);
    expect(done.finishReason).toBe('stop');
    expect(done.completionTokens).toBeLessThanOrEqual(20);
  });

  it('with a schema yields its shape', async () => {
    const jsonSchema = { type: 'object', properties: { city: { type: 'string' }, rain: { type: 'boolean' } } };
    const { text, done } = await collect({ maxTokens: 24, temperature: 1, topP: 1, seed: 3, jsonMode: true, jsonSchema });
    const value = JSON.parse(text) as Record<string, unknown>;
    expect(Object.keys(value)).toEqual(['city', 'rain']);
    expect(value.city).toBeTypeOf('string');
    expect(value.rain).toBeTypeOf('boolean');
    expect(done.finishReason).toBe('stop');
  });

  it('without jsonMode decodes as before (the random model does not write JSON)', async () => {
    const { text } = await collect({ maxTokens: 12, temperature: 0, topP: 1 });
    expect(() => JSON.parse(text)).toThrow();
  });
});
