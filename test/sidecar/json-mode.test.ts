/**
 * response_format json_object on the local models: a real `sirocco serve` process on the demo
 * models (random weights, so unconstrained text is never JSON) answers with content that
 * JSON.parse turns into an object, for several seeds, both models, streaming and not; json_schema
 * answers take the schema's shape (json-schema-constraint.ts), or any object when it cannot be shaped.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChatCompletionResponseSchema } from '../../shared/api.ts';
import { chatRequest, postChat, readStream, type SidecarProcess, startSidecarProcess } from '../support/sidecar-process.ts';

let sidecar: SidecarProcess;
beforeAll(async () => {
  sidecar = await startSidecarProcess({ args: ['--max-batch', '4'] });
});
afterAll(async () => {
  expect(await sidecar?.stop()).toBe(0);
});

const jsonObject = { type: 'json_object' } as const;

function parseObject(text: string): Record<string, unknown> {
  const value: unknown = JSON.parse(text);
  expect(value).toBeTypeOf('object');
  expect(Array.isArray(value)).toBe(false);
  expect(value).not.toBeNull();
  return value as Record<string, unknown>;
}

describe('json_object', () => {
  it.each([
    ['mistral-tiny', 0, 1],
    ['mistral-tiny', 1, 2],
    ['mistral-tiny', 1, 3],
    ['mistral-small', 0, 4],
    ['mistral-small', 0.7, 5],
  ])(
    '%s at temperature %s (seed %s): the content parses as a JSON object and ends with finish_reason "stop"',
    async (model, temperature, seed) => {
      const request = {
        ...chatRequest('Reply in JSON', { max_tokens: 24, temperature, random_seed: seed, response_format: jsonObject }),
        model,
      };
      const response = await postChat(sidecar.url, request);
      expect(response.status).toBe(200);
      const body = ChatCompletionResponseSchema.parse(await response.json());
      parseObject(String(body.choices[0]!.message.content));
      expect(body.choices[0]!.finish_reason).toBe('stop');
      expect(body.usage.completion_tokens).toBeLessThanOrEqual(24);
    },
  );

  it.each(['mistral-tiny', 'mistral-small'])('%s streams deltas that join into a JSON object', async (model) => {
    const request = {
      ...chatRequest('Reply in JSON', { stream: true, max_tokens: 20, random_seed: 6, response_format: jsonObject }),
      model,
    };
    const response = await postChat(sidecar.url, request);
    expect(response.status).toBe(200);
    const { text, chunks, sawDone } = await readStream(response);
    expect(sawDone).toBe(true);
    parseObject(text);
    const last = chunks.at(-1) as { choices: Array<{ finish_reason: string | null }> };
    expect(last.choices[0]!.finish_reason).toBe('stop');
  });

  it('gives the same object for the same seed, streaming or not', async () => {
    const request = chatRequest('Reply in JSON', { max_tokens: 16, temperature: 1, random_seed: 7, response_format: jsonObject });
    const plain = ChatCompletionResponseSchema.parse(await (await postChat(sidecar.url, request)).json());
    const streamed = await readStream(await postChat(sidecar.url, { ...request, stream: true }));
    expect(streamed.text).toBe(plain.choices[0]!.message.content);
  });

  it('with a budget too small to close the object ends with finish_reason "length"', async () => {
    const response = await postChat(
      sidecar.url,
      chatRequest('Reply in JSON', { max_tokens: 1, temperature: 0, response_format: jsonObject }),
    );
    const body = ChatCompletionResponseSchema.parse(await response.json());
    const content = String(body.choices[0]!.message.content);
    // One token can only be "{}" if the vocabulary has it; otherwise the object is cut off.
    if (body.choices[0]!.finish_reason === 'stop') parseObject(content);
    else expect(body.choices[0]!.finish_reason).toBe('length');
  });
});

describe('json_schema', () => {
  it.each([1, 2, 3])("answers in the schema's shape: its properties, in order, with values of their types (seed %s)", async (seed) => {
    const schema = {
      type: 'object',
      properties: { name: { type: 'string' }, age: { type: 'integer' }, mood: { enum: ['happy', 'sad'] }, tags: { type: 'array' } },
    };
    const response_format = { type: 'json_schema', json_schema: { name: 'person', schema } };
    const response = await postChat(
      sidecar.url,
      chatRequest('Reply in JSON', { max_tokens: 40, temperature: 1, random_seed: seed, response_format }),
    );
    expect(response.status).toBe(200);
    const body = ChatCompletionResponseSchema.parse(await response.json());
    const value = parseObject(String(body.choices[0]!.message.content));
    expect(Object.keys(value)).toEqual(['name', 'age', 'mood', 'tags']);
    expect(value.name).toBeTypeOf('string');
    expect(Number.isInteger(value.age)).toBe(true);
    expect(['happy', 'sad']).toContain(value.mood);
    expect(Array.isArray(value.tags)).toBe(true);
    expect(body.choices[0]!.finish_reason).toBe('stop');
  });

  it('falls back to any JSON object for a schema it cannot shape', async () => {
    const response_format = { type: 'json_schema', json_schema: { name: 'free', schema: { type: 'object' } } };
    const response = await postChat(sidecar.url, chatRequest('Reply in JSON', { max_tokens: 24, random_seed: 8, response_format }));
    expect(response.status).toBe(200);
    parseObject(String(ChatCompletionResponseSchema.parse(await response.json()).choices[0]!.message.content));
  });
});

describe('text', () => {
  it('response_format text leaves decoding unconstrained', async () => {
    const request = chatRequest('Hello', { max_tokens: 8, temperature: 0 });
    const plain = ChatCompletionResponseSchema.parse(await (await postChat(sidecar.url, request)).json());
    const text = ChatCompletionResponseSchema.parse(
      await (await postChat(sidecar.url, { ...request, response_format: { type: 'text' } })).json(),
    );
    expect(text.choices[0]!.message.content).toBe(plain.choices[0]!.message.content);
  });
});
