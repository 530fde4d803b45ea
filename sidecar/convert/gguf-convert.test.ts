/**
 * GGUF files converted to stores, judged by each file's reference logits (float64 maths on the
 * weights as llama.cpp dequantises them, llama.cpp's semantics: no sliding window). An fp32 store
 * of the dequantised weights matches to ≤ 1e-4 of the largest logit whatever the file's type; an
 * int4 store of a Q4_0 file keeps its blocks of 32 (experts copied unchanged) and agrees with the
 * reference as llama.cpp does. The tokenizer comes from the
 * file's vocabulary; the loader converts a GGUF file once into the store cache.
 */
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeGguf } from '../../test/support/gguf-writer.ts';
import { argmax, fullPass, greedy, relativeError, tempDir } from '../../test/support/golden.ts';
import { expertBlocksInRowOrder, expertViews, loadModel, type ModelRuntime } from '../engine/index.ts';
import { GgufFile } from '../formats/gguf.ts';
import { GgufModel } from '../formats/gguf-model.ts';
import type { Manifest } from '../formats/store-manifest.ts';
import { CHAT_TEMPLATE_FILE, loadChatRenderer, renderChatPrompt } from '../text/chat-template.ts';
import { loadTokenizer, mistralV1TokenizerJson, sentencePieceModelProto } from '../text/tokenizer.ts';
import { convertCheckpoint } from './convert.ts';
import { openModel } from './loader.ts';

const GGUF = new URL('../../test/fixtures/golden/gguf/', import.meta.url).pathname;
const TOKENIZER_CASES = new URL('../../test/fixtures/tokenizer/mistral-tokenizer-js-cases.json', import.meta.url).pathname;
const work = tempDir('gguf-convert');
afterAll(() => rmSync(work, { recursive: true, force: true }));

interface Reference {
  cases: Array<{ tokens: number[]; logits: number[][] }>;
  greedy: { prompt: number[]; continuation: number[] };
}

/** Mistral 7B Instruct's chat template as its tokenizer_config.json and GGUF files carry it. */
const MISTRAL_INSTRUCT_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
  "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
  "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}" +
  "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}" +
  "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

const reference = (model: string, file: string): Reference =>
  JSON.parse(readFileSync(join(GGUF, model, `${file}.json`), 'utf8')) as Reference;

/** Positions whose argmax matches the reference's, over all cases. */
async function topOneAgreement(runtime: ModelRuntime, ref: Reference): Promise<number> {
  let agree = 0;
  let total = 0;
  for (const c of ref.cases) {
    const logits = await fullPass(runtime, c.tokens);
    const vocab = c.logits[0]!.length;
    for (const [t, row] of c.logits.entries()) {
      total++;
      if (argmax(logits, t * vocab, vocab) === argmax(row)) agree++;
    }
  }
  return agree / total;
}

const FILES = [
  { model: 'tiny-mistral', file: 'f32' },
  { model: 'tiny-mistral', file: 'q8_0' },
  { model: 'tiny-mistral', file: 'q4_0' },
  { model: 'tiny-mixtral', file: 'q8_0' },
  { model: 'tiny-mixtral', file: 'q4_0' },
] as const;

describe.each(FILES)('$model $file.gguf → fp32 store', ({ model, file }) => {
  const ref = reference(model, file);
  let runtime: ModelRuntime;
  beforeAll(async () => {
    const store = join(work, `${model}-${file}`);
    await convertCheckpoint({ from: join(GGUF, model, `${file}.gguf`), to: store, precision: 'fp32' });
    runtime = await loadModel(store);
  });
  afterAll(() => runtime?.dispose());

  it('runs without a sliding window, as llama.cpp does', () => {
    expect(runtime.info).toMatchObject({
      architecture: model === 'tiny-mixtral' ? 'mixtral' : 'mistral',
      slidingWindow: null,
      vocabSize: 512,
    });
  });

  it('logits at every position within 1e-4 of the reference', async () => {
    for (const c of ref.cases) expect(relativeError(await fullPass(runtime, c.tokens), c.logits)).toBeLessThan(1e-4);
  });

  it('top-1 agreement and the greedy continuation', async () => {
    expect(await topOneAgreement(runtime, ref)).toBeGreaterThanOrEqual(0.95);
    expect(await greedy(runtime, ref.greedy.prompt, 16)).toEqual(ref.greedy.continuation);
  });
});

describe.each(['tiny-mistral', 'tiny-mixtral'])('%s q4_0.gguf → int4 store', (model) => {
  const store = join(work, `${model}-q4-int4`);
  beforeAll(() => convertCheckpoint({ from: join(GGUF, model, 'q4_0.gguf'), to: store, precision: 'int4' }));

  it('keeps Q4_0 matrices in blocks of 32, their own, and stays as close to the reference as llama.cpp', async () => {
    const manifest = JSON.parse(readFileSync(join(store, 'manifest.json'), 'utf8')) as Manifest;
    expect(manifest.quantization?.overrides['layers.1.attention.wq.weight']).toEqual({ bits: 4, blockSize: 32, mode: 'search' });
    // output.weight is Q8_0 in the file and int8 in the store, as for any int4 store.
    expect(manifest.quantization?.overrides['output.weight']).toEqual({ bits: 8, blockSize: 32, mode: 'absmax' });
    const runtime = await loadModel(store);
    try {
      const ref = reference(model, 'q4_0');
      expect(await topOneAgreement(runtime, ref)).toBeGreaterThanOrEqual(0.95);
      // Activations are rounded to 8 bits in the matmuls, as llama.cpp does (its own figures: 1.3e-2, 1.1e-1).
      for (const c of ref.cases) expect(relativeError(await fullPass(runtime, c.tokens), c.logits)).toBeLessThan(0.15);
    } finally {
      await runtime.dispose();
    }
  });

  // Only Mixtral has experts: the test exists for it alone (not a skipped one for Mistral).
  if (model === 'tiny-mixtral')
    it("keeps the experts' Q4_0 blocks bit for bit in the expert files (rows interleaved by four)", async () => {
      const file = await GgufFile.open(join(GGUF, 'tiny-mixtral/q4_0.gguf'));
      try {
        const [dim, ffn] = [64, 160];
        const expertFile = new Uint8Array(readFileSync(join(store, 'experts-int4', 'L1-E6.bin')));
        const matrix = ffn * (dim / 32) * 18; // [160, 64] in Q4_0 blocks
        const slice = (tensor: string) => file.readBytes(tensor, 6 * matrix, matrix);
        const gate = await slice('blk.1.ffn_gate_exps.weight');
        const up = await slice('blk.1.ffn_up_exps.weight');
        const down = await slice('blk.1.ffn_down_exps.weight');
        const rowOrder = expertBlocksInRowOrder(expertViews(expertFile, dim, ffn, 4), dim, ffn);
        expect(Buffer.from(rowOrder.w13).equals(Buffer.concat([gate, up]))).toBe(true);
        expect(Buffer.from(rowOrder.w2).equals(down)).toBe(true);
      } finally {
        await file.close();
      }
    });
});

describe("a GGUF file's expert format is the expert files' default", () => {
  it('an int8 store of a Q4_0 Mixtral pages Q4_0 experts, unless told otherwise', async () => {
    const from = join(GGUF, 'tiny-mixtral/q4_0.gguf');
    await convertCheckpoint({ from, to: join(work, 'q4-int8'), precision: 'int8' });
    expect(readdirSync(join(work, 'q4-int8')).filter((f) => f.startsWith('experts-'))).toEqual(['experts-int4']);
    await convertCheckpoint({ from, to: join(work, 'q4-int8-8'), precision: 'int8', expertBits: 8 });
    expect(readdirSync(join(work, 'q4-int8-8')).filter((f) => f.startsWith('experts-'))).toEqual(['experts-int8']);
  });
});

describe("the store's tokenizer comes from the file's vocabulary", () => {
  it('tokenizes like a tokenizer.model holding the same vocabulary', async () => {
    const store = join(work, 'tokenizer-store');
    await convertCheckpoint({ from: join(GGUF, 'tiny-mistral/q4_0.gguf'), to: store, precision: 'fp32' });
    expect(readdirSync(store)).toContain('tokenizer.json');
    const fromGguf = await loadTokenizer(store, 512);

    const source = await GgufModel.open(join(GGUF, 'tiny-mistral/q4_0.gguf'));
    const pieces = source.vocabulary()?.pieces ?? [];
    await source.close();
    const sentencePiece = join(work, 'sentencepiece');
    await mkdir(sentencePiece, { recursive: true });
    const proto = sentencePieceModelProto.fromObject({ pieces, trainer_spec: { model_type: 2, byte_fallback: true } });
    await writeFile(join(sentencePiece, 'tokenizer.model'), sentencePieceModelProto.encode(proto).finish());
    const fromModel = await loadTokenizer(sentencePiece, 512);

    expect([fromGguf.bosId, fromGguf.eosId]).toEqual([1, 2]);
    // This vocabulary has whole-word pieces but no characters to merge from: text falls back to
    // its UTF-8 bytes (<0x00> is id 3), as SentencePiece itself does.
    expect(fromGguf.encode('w1')).toEqual([...Buffer.from('▁w1')].map((byte) => byte + 3));
    for (const text of ['w1 w2 w300', 'w7w8', 'Ça va? <s> [INST] 👩‍👩‍👧', '  w3\n\tw4  ', '']) {
      expect(fromGguf.encode(text), text).toEqual(fromModel.encode(text));
      expect(fromGguf.decode(fromGguf.encode(text)), text).toBe(fromModel.decode(fromModel.encode(text)));
    }
  });

  it("reproduces Mistral's published tokenization from a GGUF file with Mistral's v1 vocabulary", async () => {
    // Scores rank each piece at the first merge that makes it, as in Mistral's own model file.
    const json = await mistralV1TokenizerJson();
    const firstMerge = new Map<string, number>();
    json.model.merges?.forEach((merge, rank) => {
      const piece = (merge as string[]).join('');
      if (!firstMerge.has(piece)) firstMerge.set(piece, rank);
    });
    const pieces = Object.entries(json.model.vocab).sort((a, b) => a[1] - b[1]);
    const dim = 32;
    const zeros = (...shape: number[]) => ({ shape, type: 0, data: new Uint8Array(4 * shape.reduce((a, b) => a * b, 1)) });
    const path = join(work, 'mistral-v1-vocab.gguf');
    writeGguf(
      path,
      {
        'general.architecture': 'llama',
        'llama.embedding_length': dim,
        'llama.block_count': 1,
        'llama.feed_forward_length': dim,
        'llama.attention.head_count': 1,
        'llama.attention.layer_norm_rms_epsilon': 1e-5,
        'tokenizer.ggml.model': 'llama',
        'tokenizer.ggml.tokens': pieces.map(([piece]) => piece),
        'tokenizer.ggml.scores': pieces.map(([piece, id]) => (id < 259 ? 0 : -(firstMerge.get(piece) ?? 1e6 + id))),
        'tokenizer.ggml.token_type': pieces.map(([, id]) => (id === 0 ? 2 : id < 3 ? 3 : id < 259 ? 6 : 1)),
        'tokenizer.chat_template': MISTRAL_INSTRUCT_TEMPLATE,
      },
      [
        { name: 'token_embd.weight', ...zeros(dim, 32000) },
        { name: 'output_norm.weight', ...zeros(dim) },
        ...['attn_q', 'attn_k', 'attn_v', 'attn_output', 'ffn_gate', 'ffn_up', 'ffn_down'].map((t) => ({
          name: `blk.0.${t}.weight`,
          ...zeros(dim, dim),
        })),
        ...['attn_norm', 'ffn_norm'].map((t) => ({ name: `blk.0.${t}.weight`, ...zeros(dim) })),
      ],
    );
    const store = join(work, 'mistral-v1-vocab');
    await convertCheckpoint({ from: path, to: store, precision: 'fp32' });
    const tokenizer = await loadTokenizer(store, 32000);
    const published = JSON.parse(readFileSync(TOKENIZER_CASES, 'utf8')) as { cases: Array<{ text: string; ids: number[] }> };
    for (const { text, ids } of published.cases) {
      expect([tokenizer.bosId, ...tokenizer.encode(text)], text).toEqual(ids);
      expect(tokenizer.decode(ids), text).toBe(text);
    }
    // The file's chat template travels with the store and renders its prompts: for Mistral's own
    // template, the same ids as the built-in one.
    expect(readFileSync(join(store, CHAT_TEMPLATE_FILE), 'utf8')).toBe(MISTRAL_INSTRUCT_TEMPLATE);
    const render = await loadChatRenderer(store);
    expect(render).not.toBe(renderChatPrompt);
    const chat = [{ role: 'user' as const, content: 'Write a haiku about the wind.' }];
    expect(render(tokenizer, chat)).toEqual(renderChatPrompt(tokenizer, chat));
  });
});

describe('the loader converts a GGUF file once into the store cache', () => {
  it('reuses the converted store, and leaves nothing behind for a bad file', async () => {
    const home = join(work, 'home');
    const previous = process.env.SIROCCO_HOME;
    process.env.SIROCCO_HOME = home;
    try {
      const path = join(GGUF, 'tiny-mistral/q8_0.gguf');
      const first = await openModel(path, { precision: 'fp32' });
      expect(first.dir.startsWith(join(home, 'stores'))).toBe(true);
      await first.dispose();
      const second = await openModel(path, { precision: 'fp32' });
      expect(second.dir).toBe(first.dir);
      await second.dispose();

      const bad = join(work, 'bad.gguf');
      writeFileSync(bad, 'GGUF\u0003\u0000\u0000\u0000');
      await expect(openModel(bad, { precision: 'fp32' })).rejects.toThrow(/bad\.gguf is truncated/);
      expect(readdirSync(join(home, 'stores'))).toEqual([first.dir.split('/').pop()]);
    } finally {
      if (previous === undefined) delete process.env.SIROCCO_HOME;
      else process.env.SIROCCO_HOME = previous;
    }
  });
});
