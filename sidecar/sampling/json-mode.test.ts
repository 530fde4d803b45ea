/**
 * JSON mode masks the Mistral v1 vocabulary so whatever the logits say — here adversarial logits
 * that favour words, seeded noise, greedy and sampled — the decoded answer is a JSON object that
 * ends exactly when it closes, and closes within the token budget.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { mistralV1TokenizerJson, type Tokenizer, tokenizerFromJson } from '../text/tokenizer.ts';
import { createJsonModeSampler, jsonVocabulary, topCandidates } from './json-mode.ts';
import { createRandom, createSampler } from './sampler.ts';

let tokenizer: Tokenizer;
beforeAll(async () => {
  tokenizer = tokenizerFromJson(await mistralV1TokenizerJson());
});

/** Runs JSON mode over `maxTokens` steps of logits from `makeLogits`; returns the ids and whether it completed. */
function run(makeLogits: (step: number) => Float32Array, maxTokens: number, temperature: number, seed: number) {
  const sampler = createJsonModeSampler(tokenizer, createSampler({ temperature, topP: temperature === 0 ? 1 : 0.9, seed }));
  const ids: number[] = [];
  while (!sampler.complete && ids.length < maxTokens) ids.push(sampler.sample(makeLogits(ids.length), maxTokens - ids.length));
  return { ids, complete: sampler.complete, text: tokenizer.decode(ids) };
}

function noiseLogits(seed: number): (step: number) => Float32Array {
  const random = createRandom(seed);
  return () => Float32Array.from({ length: tokenizer.vocabSize }, () => random() * 10);
}

describe('vocabulary pieces', () => {
  it('keep SentencePiece spaces and byte-fallback ASCII, and drop control tokens and lone UTF-8 bytes', () => {
    const { pieces } = jsonVocabulary(tokenizer);
    expect(pieces[tokenizer.encode('Hello')[0]!]).toBe(' Hello');
    expect(pieces[0x0a + 3]).toBe('\n'); // <0x0A>
    expect(pieces[0x7b + 3]).toBe('{'); // <0x7B>
    expect(pieces[tokenizer.bosId]).toBe('');
    expect(pieces[tokenizer.eosId]).toBe('');
    expect(pieces[0xe2 + 3]).toBe(''); // <0xE2>, the first byte of a 3-byte character
  });
});

describe('masked sampling', () => {
  it('picks the highest-logit token that keeps the text valid, never a higher invalid one', () => {
    const logits = new Float32Array(tokenizer.vocabSize);
    const word = tokenizer.encode('Hello')[0]!;
    const brace = tokenizer.encode('{')[0]!;
    logits[word] = 10;
    logits[brace] = 5;
    expect(topCandidates(logits, 2)).toEqual([word, brace]);
    const sampler = createJsonModeSampler(tokenizer, createSampler({ temperature: 0, topP: 1 }));
    expect(sampler.sample(logits, 10)).toBe(brace);
  });

  it.each([
    [0, 1],
    [0, 2],
    [0.8, 3],
    [1.2, 4],
  ])('at temperature %s (seed %s) random logits give a complete JSON object within the budget', (temperature, seed) => {
    const { text, complete, ids } = run(noiseLogits(seed), 24, temperature, seed);
    expect(complete).toBe(true);
    expect(ids.length).toBeLessThanOrEqual(24);
    expect(typeof JSON.parse(text)).toBe('object');
    expect(Array.isArray(JSON.parse(text))).toBe(false);
  });

  it('is reproducible for a seed', () => {
    expect(run(noiseLogits(9), 20, 1, 9).ids).toEqual(run(noiseLogits(9), 20, 1, 9).ids);
  });

  it('closes deep nesting in time when the logits push to keep opening', () => {
    const open = tokenizer.encode('[')[0]!;
    const logits = () => {
      const row = new Float32Array(tokenizer.vocabSize).fill(-5);
      row[open] = 20;
      row[tokenizer.encode('{"')[0]!] = 15;
      return row;
    };
    const { text, complete, ids } = run(logits, 16, 0, 0);
    expect(complete).toBe(true);
    expect(ids.length).toBeLessThanOrEqual(16);
    expect(() => JSON.parse(text)).not.toThrow();
  });

  it.each([6, 9, 12, 17, 24])('closes within %s tokens when a late token opens several levels at once', (maxTokens) => {
    // `:{"` after a key opens a value, an object and a key in one token: the completion grows by
    // several characters, so the budget must be checked at every step, not only near the end.
    const opener = tokenizer.encode('{"')[0]!;
    const keyCloseOpen = tokenizer.encode('":{"').slice(0, 2);
    const logits = (step: number) => {
      const row = new Float32Array(tokenizer.vocabSize).fill(-5);
      row[opener] = 12;
      for (const id of keyCloseOpen) row[id] = 14;
      row[tokenizer.encode('word')[0]!] = step % 2 === 0 ? 16 : 8;
      return row;
    };
    const { text, complete, ids } = run(logits, maxTokens, 0, 0);
    expect(complete).toBe(true);
    expect(ids.length).toBeLessThanOrEqual(maxTokens);
    expect(() => JSON.parse(text)).not.toThrow();
  });

  it('never picks EOS before the object is complete, even when EOS has the top logit', () => {
    const logits = () => {
      const row = new Float32Array(tokenizer.vocabSize);
      row[tokenizer.eosId] = 100;
      return row;
    };
    const { ids, complete } = run(logits, 12, 0, 0);
    expect(ids).not.toContain(tokenizer.eosId);
    expect(complete).toBe(true);
  });
});
