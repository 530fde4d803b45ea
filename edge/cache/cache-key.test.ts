/**
 * The response-cache key: requests that must produce the same answer share a key, anything that
 * could change the answer (or the tenant) gives a different one.
 */
import { describe, expect, it } from 'vitest';
import type { ChatCompletionRequest } from '../../shared/api.ts';
import { cacheKey, canonicalJson } from './cache-key.ts';

const base: ChatCompletionRequest = {
  model: 'mistral-tiny',
  messages: [{ role: 'user', content: 'Name a wind of the Sahara.' }],
  temperature: 0,
};

const keyOf = (request: Partial<ChatCompletionRequest>, tenant = 'acme') => cacheKey(tenant, { ...base, ...request });

describe('cacheKey', () => {
  it('is a hex SHA-256', async () => {
    expect(await keyOf({})).toMatch(/^[0-9a-f]{64}$/);
  });

  it('ignores how the answer is delivered and how equivalent values are spelled', async () => {
    const key = await keyOf({});
    expect(await keyOf({ stream: true, stream_options: { include_usage: true }, user: 'u-1' })).toBe(key);
    expect(await keyOf({ model: 'open-mistral-7b' })).toBe(key); // alias of mistral-tiny
    expect(await keyOf({ top_p: 1, safe_prompt: false, random_seed: null, max_tokens: null })).toBe(key);
    expect(
      await keyOf({
        messages: [
          {
            role: 'user',
            content: [
              { type: 'text', text: 'Name a wind ' },
              { type: 'text', text: 'of the Sahara.' },
            ],
          },
        ],
      }),
    ).toBe(key);
    expect(await cacheKey('acme', { temperature: 0, messages: base.messages, model: 'mistral-tiny' })).toBe(key); // field order
    expect(await keyOf({ stop: '\n' })).toBe(await keyOf({ stop: ['\n'] }));
    expect(await keyOf({ stop: [] })).toBe(key);
  });

  it('changes with the tenant and with every field that can change the answer', async () => {
    const key = await keyOf({});
    const variants: Partial<ChatCompletionRequest>[] = [
      { model: 'mistral-small' },
      { messages: [{ role: 'user', content: 'Name a wind of the Gobi.' }] },
      { messages: [{ role: 'system', content: 'Name a wind of the Sahara.' }] },
      { random_seed: 7 },
      { top_p: 0.9 },
      { max_tokens: 16 },
      { safe_prompt: true },
      { stop: ['.'] },
      { response_format: { type: 'json_object' } },
      { tools: [{ type: 'function', function: { name: 'lookup', parameters: {} } }] },
      { presence_penalty: 0.5 },
    ];
    const keys = await Promise.all(variants.map((variant) => keyOf(variant)));
    expect(new Set([key, ...keys]).size).toBe(variants.length + 1);
    expect(await keyOf({}, 'globex')).not.toBe(key);
  });

  it('serialises objects with sorted keys at every depth', () => {
    expect(canonicalJson({ b: 1, a: { d: [{ f: 1, e: 2 }], c: null } })).toBe('{"a":{"c":null,"d":[{"e":2,"f":1}]},"b":1}');
  });
});
