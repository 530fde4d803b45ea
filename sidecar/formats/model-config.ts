/**
 * Model hyper-parameters from either checkpoint layout, normalised into one `ModelConfig`.
 *
 * Mistral native: `params.json` (dim, n_layers, n_heads, n_kv_heads, head_dim, hidden_dim,
 * norm_eps, vocab_size, sliding_window, rope_theta, moe: {num_experts, num_experts_per_tok}).
 * Hugging Face: `config.json` (hidden_size, num_hidden_layers, …, model_type mistral|mixtral).
 * Pitfalls (docs/engine-facts.md): v0.1 params.json has no rope_theta and current
 * mistral-inference would default to 1e6 — wrong for Mistral 7B, so dense defaults to 1e4;
 * sliding_window may be null/absent (no window); head_dim may be absent (dim / n_heads).
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { modelError } from '../errors.ts';

export type Architecture = 'mistral' | 'mixtral';
export type CheckpointLayout = 'native' | 'hf';

export interface ModelConfig {
  architecture: Architecture;
  dim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  /** FFN hidden size (per expert for Mixtral). */
  hiddenDim: number;
  vocabSize: number;
  normEps: number;
  ropeTheta: number;
  /** Keys a query may see, itself included; null = full causal attention. */
  slidingWindow: number | null;
  contextLength: number;
  bosId: number;
  eosId: number;
  /** 0 for dense models. */
  numExperts: number;
  expertsPerToken: number;
  tieEmbeddings: boolean;
}

/** Mistral v0.1 models are trained to 32k positions; native params.json does not say. */
const DEFAULT_CONTEXT = 32768;

type Json = Record<string, unknown>;

class FieldReader {
  constructor(
    private readonly json: Json,
    private readonly file: string,
  ) {}

  has(key: string): boolean {
    return this.json[key] !== undefined && this.json[key] !== null;
  }

  int(key: string, fallback?: number, min = 1): number {
    const value = this.json[key] ?? fallback;
    if (value === undefined || value === null) throw modelError(`${this.file}: required field "${key}" is missing`);
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min) {
      throw modelError(`${this.file}: field "${key}" must be an integer ≥ ${min}, got ${JSON.stringify(value)}`);
    }
    return value;
  }

  number(key: string, fallback: number): number {
    const value = this.json[key] ?? fallback;
    if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
      throw modelError(`${this.file}: field "${key}" must be a positive number, got ${JSON.stringify(value)}`);
    }
    return value;
  }

  optionalInt(key: string): number | null {
    return this.has(key) ? this.int(key) : null;
  }

  object(key: string): FieldReader | null {
    const value = this.json[key];
    if (value === undefined || value === null) return null;
    if (typeof value !== 'object' || Array.isArray(value)) throw modelError(`${this.file}: field "${key}" must be an object`);
    return new FieldReader(value as Json, `${this.file} (${key})`);
  }

  string(key: string): string | null {
    const value = this.json[key];
    return typeof value === 'string' ? value : null;
  }
}

/**
 * A dense model seen as a Mixtral with one expert that every token takes: its router weights are
 * zero, the softmax over one logit is exactly 1 and 1·y = y, so the layers come out the same and
 * the native layer, expert and head files serve dense models too.
 */
export function asOneExpert(config: ModelConfig): ModelConfig {
  return { ...config, numExperts: 1, expertsPerToken: 1 };
}

/** Checks the relations between fields that the graph relies on. */
export function validateConfig(config: ModelConfig, file: string): ModelConfig {
  if (config.nHeads % config.nKvHeads !== 0) {
    throw modelError(`${file}: n_heads (${config.nHeads}) must be a multiple of n_kv_heads (${config.nKvHeads})`);
  }
  if (config.headDim % 2 !== 0) throw modelError(`${file}: head_dim (${config.headDim}) must be even for RoPE`);
  if (config.numExperts > 0 && (config.expertsPerToken < 1 || config.expertsPerToken > config.numExperts)) {
    throw modelError(`${file}: num_experts_per_tok (${config.expertsPerToken}) must be between 1 and num_experts (${config.numExperts})`);
  }
  if (config.bosId >= config.vocabSize || config.eosId >= config.vocabSize) {
    throw modelError(`${file}: bos/eos token ids must be below vocab_size (${config.vocabSize})`);
  }
  return config;
}

/** Mistral's own params.json. */
export function parseNativeParams(json: Json, file: string): ModelConfig {
  const f = new FieldReader(json, file);
  for (const unsupported of ['vision_encoder', 'lora', 'quantization']) {
    if (f.has(unsupported))
      throw modelError(`${file}: unsupported architecture (field "${unsupported}"); Sirocco runs Mistral and Mixtral text models`);
  }
  const moe = f.object('moe');
  const dim = f.int('dim');
  const nHeads = f.int('n_heads');
  const numExperts = moe ? moe.int('num_experts') : 0;
  return validateConfig(
    {
      architecture: moe ? 'mixtral' : 'mistral',
      dim,
      nLayers: f.int('n_layers'),
      nHeads,
      nKvHeads: f.int('n_kv_heads', nHeads),
      headDim: f.has('head_dim') ? f.int('head_dim') : dim / nHeads,
      hiddenDim: f.int('hidden_dim'),
      vocabSize: f.int('vocab_size'),
      normEps: f.number('norm_eps', 1e-5),
      ropeTheta: f.number('rope_theta', moe ? 1e6 : 1e4),
      slidingWindow: f.optionalInt('sliding_window'),
      contextLength: f.int('max_seq_len', DEFAULT_CONTEXT),
      bosId: f.int('bos_token_id', 1, 0),
      eosId: f.int('eos_token_id', 2, 0),
      numExperts,
      expertsPerToken: moe ? moe.int('num_experts_per_tok', 2) : 0,
      tieEmbeddings: false,
    },
    file,
  );
}

const HF_ARCHITECTURES: Record<string, Architecture> = {
  mistral: 'mistral',
  mixtral: 'mixtral',
  MistralForCausalLM: 'mistral',
  MixtralForCausalLM: 'mixtral',
};

/** Hugging Face config.json (MistralForCausalLM / MixtralForCausalLM). */
export function parseHfConfig(json: Json, file: string): ModelConfig {
  const f = new FieldReader(json, file);
  const modelType = f.string('model_type');
  const declared = Array.isArray(json.architectures)
    ? (json.architectures as unknown[]).filter((a): a is string => typeof a === 'string')
    : [];
  const architecture = (modelType && HF_ARCHITECTURES[modelType]) || declared.map((a) => HF_ARCHITECTURES[a]).find(Boolean);
  if (!architecture) {
    const what = modelType ? `model_type "${modelType}"` : declared.length ? `architectures ${JSON.stringify(declared)}` : 'no model_type';
    throw modelError(`${file}: unknown architecture (${what}); supported: mistral (MistralForCausalLM), mixtral (MixtralForCausalLM)`);
  }
  const activation = f.string('hidden_act');
  if (activation && activation !== 'silu') throw modelError(`${file}: hidden_act "${activation}" is not supported (Mistral uses silu)`);
  const dim = f.int('hidden_size');
  const nHeads = f.int('num_attention_heads');
  const isMoe = architecture === 'mixtral';
  return validateConfig(
    {
      architecture,
      dim,
      nLayers: f.int('num_hidden_layers'),
      nHeads,
      nKvHeads: f.int('num_key_value_heads', nHeads),
      headDim: f.has('head_dim') ? f.int('head_dim') : dim / nHeads,
      hiddenDim: f.int('intermediate_size'),
      vocabSize: f.int('vocab_size'),
      normEps: f.number('rms_norm_eps', 1e-5),
      ropeTheta: f.number('rope_theta', isMoe ? 1e6 : 1e4),
      slidingWindow: f.optionalInt('sliding_window'),
      contextLength: f.int('max_position_embeddings', DEFAULT_CONTEXT),
      bosId: f.int('bos_token_id', 1, 0),
      eosId: f.int('eos_token_id', 2, 0),
      numExperts: isMoe ? f.int('num_local_experts', 8) : 0,
      expertsPerToken: isMoe ? f.int('num_experts_per_tok', 2) : 0,
      tieEmbeddings: json.tie_word_embeddings === true,
    },
    file,
  );
}

async function readJson(path: string): Promise<Json | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw modelError(`cannot read ${path}: ${(error as Error).message}`, error);
  }
  try {
    const json: unknown = JSON.parse(text);
    if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new Error('not a JSON object');
    return json as Json;
  } catch (error) {
    throw modelError(`${path} is not valid JSON: ${(error as Error).message}`, error);
  }
}

/** Reads the checkpoint folder's config: params.json (native) first, else config.json (HF). */
export async function readModelConfig(dir: string): Promise<{ config: ModelConfig; layout: CheckpointLayout; file: string }> {
  const folder = await stat(dir).catch(() => undefined);
  if (!folder) throw modelError(`model folder ${dir} does not exist`);
  if (!folder.isDirectory()) throw modelError(`${dir} is not a folder (expected a checkpoint folder or a converted store)`);
  const paramsPath = join(dir, 'params.json');
  const params = await readJson(paramsPath);
  if (params) return { config: parseNativeParams(params, paramsPath), layout: 'native', file: paramsPath };
  const configPath = join(dir, 'config.json');
  const hf = await readJson(configPath);
  if (hf) return { config: parseHfConfig(hf, configPath), layout: 'hf', file: configPath };
  throw modelError(
    `${dir} is not a model folder: no manifest.json (converted store), params.json (Mistral layout) or config.json (Hugging Face layout)`,
  );
}
