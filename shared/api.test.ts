import { describe, expect, it } from 'vitest';
import {
  ChatCompletionChunkSchema,
  ChatCompletionRequestSchema,
  ChatCompletionResponseSchema,
  isDeterministic,
  localModelCards,
  ModelListSchema,
  messageText,
  requiresToolCall,
  resolveModelId,
} from './api.ts';

const minimal = { model: 'mistral-tiny', messages: [{ role: 'user', content: 'Hello' }] };

function parse(body: Record<string, unknown>) {
  return ChatCompletionRequestSchema.safeParse(body);
}

describe('resolveModelId', () => {
  it('maps every public name of the dense model to mistral-tiny', () => {
    for (const name of ['mistral-tiny', 'open-mistral-7b', 'mistral-tiny-2312']) expect(resolveModelId(name)).toBe('mistral-tiny');
  });
  it('maps every public name of the MoE model to mistral-small', () => {
    for (const name of ['mistral-small', 'open-mixtral-8x7b', 'mistral-small-2312']) expect(resolveModelId(name)).toBe('mistral-small');
  });
  it('has no silent aliases for API-only or newer models', () => {
    for (const name of ['mistral-medium', 'mistral-medium-latest', 'mistral-small-latest', '']) expect(resolveModelId(name)).toBeNull();
  });
});

describe('ChatCompletionRequestSchema', () => {
  it('accepts a minimal request and every documented field', () => {
    expect(parse(minimal).success).toBe(true);
    const full = {
      ...minimal,
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: [{ type: 'text', text: 'Hi' }] },
        { role: 'assistant', content: null, tool_calls: [{ id: 'a', type: 'function', function: { name: 'f', arguments: '{}' } }] },
        { role: 'tool', content: '42', tool_call_id: 'a', name: 'f' },
      ],
      temperature: 1.5,
      top_p: 0,
      max_tokens: 1,
      stream: true,
      stop: ['\n'],
      random_seed: 0,
      safe_prompt: false,
      response_format: { type: 'json_schema', json_schema: { name: 'r', schema: { type: 'object' } } },
      presence_penalty: 0.5,
      frequency_penalty: -0.5,
      tools: [{ type: 'function', function: { name: 'f', parameters: {} } }],
      tool_choice: 'auto',
      parallel_tool_calls: false,
      stream_options: { include_usage: true },
      user: 'u-1',
    };
    const result = parse(full);
    expect(result.error).toBeUndefined();
  });

  it('accepts null for optional fields, as some clients send them', () => {
    expect(parse({ ...minimal, temperature: null, random_seed: null, stop: null, max_tokens: null }).success).toBe(true);
  });

  it('rejects unknown top-level and message fields', () => {
    const topLevel = parse({ ...minimal, safe_mode: true });
    expect(topLevel.success).toBe(false);
    expect(topLevel.error?.issues[0]).toMatchObject({ code: 'unrecognized_keys', keys: ['safe_mode'] });
    expect(parse({ ...minimal, messages: [{ role: 'user', content: 'x', colour: 'red' }] }).success).toBe(false);
  });

  it.each([
    ['temperature above 1.5', { temperature: 1.6 }],
    ['negative temperature', { temperature: -0.1 }],
    ['top_p above 1', { top_p: 1.01 }],
    ['max_tokens of 0', { max_tokens: 0 }],
    ['fractional max_tokens', { max_tokens: 2.5 }],
    ['negative random_seed', { random_seed: -1 }],
    ['fractional random_seed', { random_seed: 1.5 }],
    ['numeric stop', { stop: 5 }],
    ['unknown response_format type', { response_format: { type: 'yaml' } }],
    ['json_schema without a schema', { response_format: { type: 'json_schema' } }],
    ['empty messages', { messages: [] }],
    ['unknown role', { messages: [{ role: 'robot', content: 'x' }] }],
    ['image chunks', { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: 'x' }] }] }],
    ['missing model', { model: undefined }],
    ['unknown tool_choice', { tool_choice: 'sometimes' }],
  ])('rejects %s', (_name, patch) => {
    expect(parse({ ...minimal, ...patch }).success).toBe(false);
  });
});

describe('request helpers', () => {
  const request = (patch: Record<string, unknown>) => ChatCompletionRequestSchema.parse({ ...minimal, ...patch });

  it('calls greedy or seeded requests deterministic, and the 0.7 default not', () => {
    expect(isDeterministic(request({ temperature: 0 }))).toBe(true);
    expect(isDeterministic(request({ random_seed: 7 }))).toBe(true);
    expect(isDeterministic(request({}))).toBe(false);
    expect(isDeterministic(request({ temperature: 0.2, random_seed: null }))).toBe(false);
  });

  it('knows when a request demands a tool call', () => {
    const tools = [{ type: 'function', function: { name: 'f', parameters: {} } }];
    expect(requiresToolCall(request({ tools, tool_choice: 'any' }))).toBe(true);
    expect(requiresToolCall(request({ tools, tool_choice: { type: 'function', function: { name: 'f' } } }))).toBe(true);
    expect(requiresToolCall(request({ tools, tool_choice: 'auto' }))).toBe(false);
    expect(requiresToolCall(request({ tool_choice: 'any' }))).toBe(false);
  });

  it('joins text chunks', () => {
    expect(
      messageText([
        { type: 'text', text: 'a' },
        { type: 'text', text: 'b' },
      ]),
    ).toBe('ab');
    expect(messageText('plain')).toBe('plain');
    expect(messageText(null)).toBe('');
  });
});

describe('response schemas', () => {
  const usage = { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 };

  it('parses a completion and keeps fields it does not know', () => {
    const body = {
      id: 'cmpl-1',
      object: 'chat.completion',
      created: 1,
      model: 'mistral-tiny',
      choices: [{ index: 0, message: { role: 'assistant', content: 'Hi' }, finish_reason: 'stop' }],
      usage: { ...usage, prompt_cache_hit_tokens: 0 },
    };
    expect(ChatCompletionResponseSchema.parse(body).usage).toEqual(body.usage);
    expect(ChatCompletionResponseSchema.safeParse({ ...body, usage: undefined }).success).toBe(false);
  });

  it('parses the first, middle and last stream chunks', () => {
    const base = { id: 'cmpl-1', object: 'chat.completion.chunk', created: 1, model: 'mistral-tiny' };
    const chunks = [
      { ...base, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] },
      { ...base, choices: [{ index: 0, delta: { content: 'Hi' }, finish_reason: null }] },
      { ...base, choices: [{ index: 0, delta: { content: '' }, finish_reason: 'stop' }], usage },
    ];
    for (const chunk of chunks) expect(ChatCompletionChunkSchema.safeParse(chunk).success).toBe(true);
  });

  it('lists both local models with their aliases', () => {
    const list = ModelListSchema.parse({ object: 'list', data: localModelCards(1700000000) });
    expect(list.data.map((card) => card.id)).toEqual(['mistral-tiny', 'mistral-small']);
    expect(list.data[1]?.aliases).toContain('open-mixtral-8x7b');
  });
});
