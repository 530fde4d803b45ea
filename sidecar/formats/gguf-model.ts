/**
 * A GGUF file of llama.cpp's `llama` architecture (Mistral; Mixtral = llama with
 * `llama.expert_count` > 0) as a conversion source: config from its metadata, tensors under
 * Mistral's canonical names, the tokenizer rebuilt from its vocabulary.
 *
 * llama.cpp semantics differ from a checkpoint's in one place: its llama architecture has no
 * sliding window, so the config has none. q/k rows are in Meta's interleaved-RoPE order (llama.cpp's
 * converter permutes Hugging Face's back), i.e. the native layout, turned into rotate-half here as
 * for native checkpoints. Mixtral's experts are stacked per layer (`blk.N.ffn_gate_exps` [dim,
 * ffn, experts]); one expert is a contiguous run of rows, read on its own.
 */
import { createHash } from 'node:crypto';
import { basename, extname } from 'node:path';
import type { MetadataValue } from '@huggingface/gguf';
import { modelError } from '../errors.ts';
import type { BlockFormat } from './blocks.ts';
import { expectedTensors, interleavedToRotateHalf } from './checkpoint.ts';
import { GgufFile, type GgufTensor, rowBytes } from './gguf.ts';
import { type ModelConfig, validateConfig } from './model-config.ts';
import type { ExpertBlocks, ModelSource, SentencePieceVocabulary } from './model-source.ts';

/** Where a canonical tensor lives: a GGUF tensor, or a run of its rows (one stacked expert). */
interface Location {
  tensor: string;
  firstRow: number;
  rows: number;
}

const DENSE_NAMES: Array<[RegExp, string]> = [
  [/^tok_embeddings\.weight$/, 'token_embd.weight'],
  [/^norm\.weight$/, 'output_norm.weight'],
  [/^output\.weight$/, 'output.weight'],
  [/^layers\.(\d+)\.attention\.wq\.weight$/, 'blk.$1.attn_q.weight'],
  [/^layers\.(\d+)\.attention\.wk\.weight$/, 'blk.$1.attn_k.weight'],
  [/^layers\.(\d+)\.attention\.wv\.weight$/, 'blk.$1.attn_v.weight'],
  [/^layers\.(\d+)\.attention\.wo\.weight$/, 'blk.$1.attn_output.weight'],
  [/^layers\.(\d+)\.attention_norm\.weight$/, 'blk.$1.attn_norm.weight'],
  [/^layers\.(\d+)\.ffn_norm\.weight$/, 'blk.$1.ffn_norm.weight'],
  [/^layers\.(\d+)\.feed_forward\.w1\.weight$/, 'blk.$1.ffn_gate.weight'],
  [/^layers\.(\d+)\.feed_forward\.w2\.weight$/, 'blk.$1.ffn_down.weight'],
  [/^layers\.(\d+)\.feed_forward\.w3\.weight$/, 'blk.$1.ffn_up.weight'],
  [/^layers\.(\d+)\.feed_forward\.gate\.weight$/, 'blk.$1.ffn_gate_inp.weight'],
];

const EXPERT_NAME = /^layers\.(\d+)\.feed_forward\.experts\.(\d+)\.(w[123])\.weight$/;
const STACKED: Record<string, string> = { w1: 'ffn_gate_exps', w2: 'ffn_down_exps', w3: 'ffn_up_exps' };
/** Mixtral files from before llama.cpp stacked the experts (early 2024). */
const PER_EXPERT_LAYOUT = /^blk\.\d+\.ffn_(gate|up|down)\.\d+\.weight$/;

const FORMAT_DTYPES: Record<BlockFormat, string> = { q4_0: 'Q4_0', q8_0: 'Q8_0' };

/** The GGUF tensor name of a canonical (non-expert) tensor. */
export function ggufTensorName(canonical: string): string {
  for (const [pattern, replacement] of DENSE_NAMES) if (pattern.test(canonical)) return canonical.replace(pattern, replacement);
  throw modelError(`no GGUF name for tensor "${canonical}"`);
}

/** Typed access to GGUF metadata, with errors naming the file and key. */
class Metadata {
  constructor(
    private readonly values: Record<string, MetadataValue>,
    private readonly file: string,
  ) {}

  has(key: string): boolean {
    return this.values[key] !== undefined;
  }

  int(key: string, fallback?: number, min = 1): number {
    const raw = this.values[key];
    const value = raw === undefined ? fallback : typeof raw === 'bigint' ? Number(raw) : raw;
    if (value === undefined) throw modelError(`${this.file}: required metadata "${key}" is missing`);
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
      throw modelError(`${this.file}: metadata "${key}" must be an integer ≥ ${min}, got ${JSON.stringify(String(value))}`);
    }
    return value;
  }

  number(key: string, fallback: number): number {
    const value = this.values[key] ?? fallback;
    if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
      throw modelError(`${this.file}: metadata "${key}" must be a positive number, got ${JSON.stringify(String(value))}`);
    }
    return value;
  }

  string(key: string): string | undefined {
    const value = this.values[key];
    if (value === undefined) return undefined;
    if (typeof value !== 'string') throw modelError(`${this.file}: metadata "${key}" must be a string`);
    return value;
  }

  bool(key: string, fallback: boolean): boolean {
    const value = this.values[key];
    return typeof value === 'boolean' ? value : fallback;
  }

  array(key: string): MetadataValue[] | undefined {
    const value = this.values[key];
    if (value === undefined) return undefined;
    if (!Array.isArray(value)) throw modelError(`${this.file}: metadata "${key}" must be an array`);
    return value;
  }
}

/** The model's hyper-parameters from `llama.*` metadata; sliding window none (llama.cpp has none). */
function configFromMetadata(meta: Metadata, file: string, hasOutput: boolean): ModelConfig {
  const architecture = meta.string('general.architecture');
  if (architecture !== 'llama') {
    throw modelError(
      `${file}: unknown architecture "${architecture ?? '(none)'}" (general.architecture); Sirocco reads GGUF files of the llama architecture (Mistral, Mixtral)`,
    );
  }
  const ropeScaling = meta.string('llama.rope.scaling.type');
  if (ropeScaling !== undefined && ropeScaling !== 'none') {
    throw modelError(`${file}: RoPE scaling "${ropeScaling}" (llama.rope.scaling.type) is not supported`);
  }
  const dim = meta.int('llama.embedding_length');
  const nHeads = meta.int('llama.attention.head_count');
  const headDim = meta.has('llama.attention.key_length') ? meta.int('llama.attention.key_length') : dim / nHeads;
  for (const key of ['llama.attention.value_length', 'llama.rope.dimension_count']) {
    if (meta.has(key) && meta.int(key) !== headDim) {
      throw modelError(
        `${file}: metadata "${key}" (${meta.int(key)}) differs from the head size ${headDim}, which Sirocco does not support`,
      );
    }
  }
  const tokens = meta.array('tokenizer.ggml.tokens');
  if (!tokens) throw modelError(`${file}: metadata "tokenizer.ggml.tokens" is missing (the vocabulary size comes from it)`);
  const numExperts = meta.int('llama.expert_count', 0, 0);
  return validateConfig(
    {
      architecture: numExperts > 0 ? 'mixtral' : 'mistral',
      dim,
      nLayers: meta.int('llama.block_count'),
      nHeads,
      nKvHeads: meta.int('llama.attention.head_count_kv', nHeads),
      headDim,
      hiddenDim: meta.int('llama.feed_forward_length'),
      vocabSize: tokens.length,
      normEps: meta.number('llama.attention.layer_norm_rms_epsilon', 1e-5),
      ropeTheta: meta.number('llama.rope.freq_base', 1e4),
      slidingWindow: null,
      contextLength: meta.int('llama.context_length', 32768),
      bosId: meta.int('tokenizer.ggml.bos_token_id', 1, 0),
      eosId: meta.int('tokenizer.ggml.eos_token_id', 2, 0),
      numExperts,
      expertsPerToken: numExperts > 0 ? meta.int('llama.expert_used_count', 2) : 0,
      tieEmbeddings: !hasOutput,
    },
    file,
  );
}

export class GgufModel implements ModelSource {
  private constructor(
    private readonly file: GgufFile,
    private readonly meta: Metadata,
    readonly config: ModelConfig,
    private readonly located: Map<string, Location>,
  ) {}

  get path(): string {
    return this.file.path;
  }

  get defaultName(): string {
    return basename(this.file.path, extname(this.file.path));
  }

  /** Opens and checks the file: every tensor the model needs present, readable and of the right shape. */
  static async open(path: string): Promise<GgufModel> {
    const file = await GgufFile.open(path);
    try {
      const meta = new Metadata(file.metadata, path);
      for (const name of file.tensors.keys()) {
        if (PER_EXPERT_LAYOUT.test(name)) {
          throw modelError(
            `${path}: tensor "${name}" is in the old per-expert Mixtral layout, which Sirocco does not read; ` +
              'convert the model again with a current llama.cpp, which stacks the experts (blk.N.ffn_gate_exps.weight)',
          );
        }
      }
      const config = configFromMetadata(meta, path, file.tensors.has('output.weight'));
      const located = new Map<string, Location>();
      for (const { name, shape } of expectedTensors(config)) {
        const expert = EXPERT_NAME.exec(name);
        const tensor = expert ? `blk.${expert[1]}.${STACKED[expert[3]!]}.weight` : ggufTensorName(name);
        const info = file.info(tensor);
        file.layoutOf(tensor); // refuses types this reader cannot decode, before any work starts
        // GGUF lists ne0 (columns) first; a stacked expert tensor has the expert count last.
        const want = [...shape].reverse();
        if (expert) want.push(config.numExperts);
        if (info.shape.join(',') !== want.join(',')) {
          throw modelError(
            `${path}: tensor "${tensor}" has shape [${info.shape.join(', ')}] but the metadata implies [${want.join(', ')}]`,
          );
        }
        const rows = shape.length === 2 ? shape[0]! : 1;
        located.set(name, { tensor, firstRow: expert ? Number(expert[2]) * rows : 0, rows });
      }
      return new GgufModel(file, meta, config, located);
    } catch (error) {
      await file.close();
      throw error;
    }
  }

  private locate(name: string): Location {
    const source = name === 'output.weight' && this.config.tieEmbeddings ? 'tok_embeddings.weight' : name;
    const location = this.located.get(source);
    if (!location) throw modelError(`tensor "${name}" is not part of this model`);
    return location;
  }

  async read(name: string): Promise<Float32Array> {
    const { tensor, firstRow, rows } = this.locate(name);
    const data = await this.file.readFloat32(tensor, firstRow, rows);
    const { nHeads, nKvHeads, headDim, dim } = this.config;
    if (/\.attention\.wq\.weight$/.test(name)) return interleavedToRotateHalf(data, nHeads, headDim, dim);
    if (/\.attention\.wk\.weight$/.test(name)) return interleavedToRotateHalf(data, nKvHeads, headDim, dim);
    return data;
  }

  async expertBlocks(layer: number, expert: number, format: BlockFormat): Promise<ExpertBlocks | undefined> {
    const prefix = `layers.${layer}.feed_forward.experts.${expert}`;
    const locations = (['w1', 'w3', 'w2'] as const).map((w) => this.locate(`${prefix}.${w}.weight`));
    const infos = locations.map(({ tensor }) => this.file.info(tensor));
    if (!infos.every((info) => info.typeName === FORMAT_DTYPES[format])) return undefined;
    const [w1, w3, w2] = await Promise.all(locations.map((location, i) => this.readRows(infos[i]!, location)));
    return { w1: w1!, w3: w3!, w2: w2! };
  }

  blockFormatOf(name: string): BlockFormat | undefined {
    const { typeName } = this.file.info(this.locate(name).tensor);
    return typeName === 'Q4_0' ? 'q4_0' : typeName === 'Q8_0' ? 'q8_0' : undefined;
  }

  private readRows(info: GgufTensor, { tensor, firstRow, rows }: Location): Promise<Uint8Array> {
    const perRow = rowBytes(this.file.layoutOf(tensor), info.shape[0]!);
    return this.file.readBytes(tensor, firstRow * perRow, rows * perRow);
  }

  /**
   * Header, metadata and tensor directory, the file size, and samples of the data (start, middle,
   * end): a re-download or an edit of the weights changes one of them in practice.
   */
  async sourceHash(): Promise<string> {
    const hash = createHash('sha256');
    hash.update(`gguf:${this.file.size}`);
    const chunk = 1 << 20;
    for (let at = 0; at < this.file.dataOffset; at += chunk) {
      hash.update(await this.file.readFileBytes(at, Math.min(chunk, this.file.dataOffset - at)));
    }
    const data = this.file.size - this.file.dataOffset;
    const sample = 65536;
    const starts = data <= 3 * sample ? [0] : [0, Math.floor(data / 2), data - sample];
    for (const start of starts)
      hash.update(await this.file.readFileBytes(this.file.dataOffset + start, data <= 3 * sample ? data : sample));
    return hash.digest('hex').slice(0, 24);
  }

  /** The file carries its tokenizer as metadata (`vocabulary`), not as files. */
  async tokenizerFiles(): Promise<string[]> {
    return [];
  }

  /**
   * The SentencePiece vocabulary (`tokenizer.ggml.model` "llama"). Other vocabularies are not
   * carried: such a store runs logits but has no text tokenizer.
   */
  vocabulary(): SentencePieceVocabulary | undefined {
    if (this.meta.string('tokenizer.ggml.model') !== 'llama') return undefined;
    const tokens = this.meta.array('tokenizer.ggml.tokens') ?? [];
    const scores = this.meta.array('tokenizer.ggml.scores');
    const types = this.meta.array('tokenizer.ggml.token_type');
    const pieces = tokens.map((piece, id) => {
      if (typeof piece !== 'string') throw modelError(`${this.path}: token ${id} of "tokenizer.ggml.tokens" is not a string`);
      // GGUF's token types use SentencePiece's numbering.
      return { piece, score: Number(scores?.[id] ?? 0), type: Number(types?.[id] ?? 1) };
    });
    return { pieces, addDummyPrefix: this.meta.bool('tokenizer.ggml.add_space_prefix', true) };
  }

  /** `tokenizer.chat_template`, when the file carries one. */
  chatTemplate(): string | undefined {
    return this.meta.string('tokenizer.chat_template');
  }

  async close(): Promise<void> {
    await this.file.close();
  }
}
