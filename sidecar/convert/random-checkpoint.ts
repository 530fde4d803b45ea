/**
 * Writes a checkpoint of any Mistral/Mixtral shape with deterministic random weights, in Mistral's
 * native layout: params.json + consolidated-NNNNN-of-NNNNN.safetensors (BF16, as published
 * checkpoints are). Used for the demo models and for benchmark shapes.
 *
 * Every tensor is drawn from its own generator, seeded by (seed, tensor name), so the bytes are the
 * same on every machine and do not depend on write order. Shards are written one at a time (the
 * embedding, each layer, the head), so memory holds one shard, not the model.
 *
 * Scales keep activations and logits in a useful range: embeddings and linear weights uniform with
 * standard deviation 0.02 (GPT-2 style init), RMSNorm weights 1. With embeddings this small the
 * attention output, a mix over the whole prompt, dominates the residual stream, so the output
 * depends on the prompt and not only on its last token.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ModelConfig } from '../formats/model-config.ts';
import { type TensorToWrite, writeSafetensors } from '../formats/safetensors.ts';
import { createRandom } from '../sampling/sampler.ts';

/**
 * A model's shape as a random checkpoint needs it: the config's sizes, with the optional fields
 * defaulting as params.json does (norm_eps 1e-5, dense unless `numExperts` is set).
 */
export type ModelShape = Pick<
  ModelConfig,
  'dim' | 'nLayers' | 'nHeads' | 'nKvHeads' | 'headDim' | 'hiddenDim' | 'vocabSize' | 'slidingWindow' | 'ropeTheta'
> &
  Partial<Pick<ModelConfig, 'normEps' | 'contextLength' | 'numExperts' | 'expertsPerToken'>>;

/** The benchmark's dense shape: a 1.0B-parameter Mistral, llama.cpp's anchor shape (bench:engine). */
export const BENCH_1B_SHAPE: ModelShape = {
  dim: 2048,
  nLayers: 16,
  nHeads: 16,
  nKvHeads: 4,
  headDim: 128,
  hiddenDim: 7168,
  vocabSize: 32000,
  slidingWindow: 4096,
  ropeTheta: 10000,
};

const LINEAR_STD = 0.02;
const EMBEDDING_STD = 0.02;

/** 32-bit FNV-1a: a stable per-tensor salt for the seed. */
function fnv1a(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193);
  return hash >>> 0;
}

/** Uniform values with mean 0 and standard deviation `std` (or all `constant`). */
function randomTensor(name: string, shape: number[], seed: number, std: number | { constant: number }): TensorToWrite {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  if (typeof std === 'object') data.fill(std.constant);
  else {
    const random = createRandom((BigInt(seed) << 32n) | BigInt(fnv1a(name)));
    const halfWidth = std * Math.sqrt(3);
    for (let i = 0; i < data.length; i++) data[i] = (random() * 2 - 1) * halfWidth;
  }
  return { name, dtype: 'BF16', shape, data };
}

/** params.json in mistral-inference's format. */
export function nativeParams(shape: ModelShape): Record<string, unknown> {
  const params: Record<string, unknown> = {
    dim: shape.dim,
    n_layers: shape.nLayers,
    head_dim: shape.headDim,
    hidden_dim: shape.hiddenDim,
    n_heads: shape.nHeads,
    n_kv_heads: shape.nKvHeads,
    norm_eps: shape.normEps ?? 1e-5,
    vocab_size: shape.vocabSize,
    sliding_window: shape.slidingWindow,
    rope_theta: shape.ropeTheta,
  };
  if (shape.contextLength !== undefined) params.max_seq_len = shape.contextLength;
  if (shape.numExperts) params.moe = { num_experts: shape.numExperts, num_experts_per_tok: shape.expertsPerToken ?? 2 };
  return params;
}

/** Tensors of one layer, native names. */
function layerTensors(shape: ModelShape, layer: number, seed: number): TensorToWrite[] {
  const { dim, nHeads, nKvHeads, headDim, hiddenDim } = shape;
  const p = `layers.${layer}`;
  const tensors = [
    randomTensor(`${p}.attention_norm.weight`, [dim], seed, { constant: 1 }),
    randomTensor(`${p}.attention.wq.weight`, [nHeads * headDim, dim], seed, LINEAR_STD),
    randomTensor(`${p}.attention.wk.weight`, [nKvHeads * headDim, dim], seed, LINEAR_STD),
    randomTensor(`${p}.attention.wv.weight`, [nKvHeads * headDim, dim], seed, LINEAR_STD),
    randomTensor(`${p}.attention.wo.weight`, [dim, nHeads * headDim], seed, LINEAR_STD),
    randomTensor(`${p}.ffn_norm.weight`, [dim], seed, { constant: 1 }),
  ];
  const ffn = (prefix: string) => [
    randomTensor(`${prefix}.w1.weight`, [hiddenDim, dim], seed, LINEAR_STD),
    randomTensor(`${prefix}.w2.weight`, [dim, hiddenDim], seed, LINEAR_STD),
    randomTensor(`${prefix}.w3.weight`, [hiddenDim, dim], seed, LINEAR_STD),
  ];
  if (!shape.numExperts) tensors.push(...ffn(`${p}.feed_forward`));
  else {
    // A wider router spreads tokens over the experts instead of always picking the same two.
    tensors.push(randomTensor(`${p}.feed_forward.gate.weight`, [shape.numExperts, dim], seed, 1 / Math.sqrt(dim)));
    for (let e = 0; e < shape.numExperts; e++) tensors.push(...ffn(`${p}.feed_forward.experts.${e}`));
  }
  return tensors;
}

/**
 * Writes the checkpoint into `dir` (created if needed). Returns the files written. Same shape and
 * seed ⇒ byte-identical files.
 */
export async function writeRandomCheckpoint(dir: string, shape: ModelShape, seed: number): Promise<string[]> {
  if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`seed must be a non-negative integer, got ${seed}`);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'params.json'), `${JSON.stringify(nativeParams(shape), null, 2)}\n`);
  const shards: Array<() => TensorToWrite[]> = [
    () => [randomTensor('tok_embeddings.weight', [shape.vocabSize, shape.dim], seed, EMBEDDING_STD)],
    ...Array.from({ length: shape.nLayers }, (_, layer) => () => layerTensors(shape, layer, seed)),
    () => [
      randomTensor('norm.weight', [shape.dim], seed, { constant: 1 }),
      randomTensor('output.weight', [shape.vocabSize, shape.dim], seed, LINEAR_STD),
    ],
  ];
  const files: string[] = [];
  const count = String(shards.length).padStart(5, '0');
  for (const [index, makeShard] of shards.entries()) {
    const file = join(dir, `consolidated-${String(index + 1).padStart(5, '0')}-of-${count}.safetensors`);
    await writeSafetensors(file, makeShard(), { format: 'pt', generator: `sirocco random-checkpoint seed ${seed}` });
    files.push(file);
  }
  return files;
}
