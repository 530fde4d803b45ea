/**
 * A raw checkpoint folder (Mistral native or Hugging Face layout) behind canonical tensor names.
 *
 * Canonical names are Mistral's native ones (`tok_embeddings.weight`, `layers.N.attention.wq.weight`,
 * `layers.N.feed_forward.experts.E.w1.weight`, `output.weight`…). Everything is normalised to ONE
 * RoPE layout, rotate-half (HF): native wq/wk rows, which rotate interleaved pairs, are permuted
 * into HF order at read time. Every expected tensor is checked (present, float dtype, shape) when
 * the checkpoint is opened, before any conversion work starts.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { modelError } from '../errors.ts';
import { type CheckpointLayout, type ModelConfig, readModelConfig } from './model-config.ts';
import type { ModelSource } from './model-source.ts';
import { SafetensorsFile, type TensorInfo } from './safetensors.ts';

export interface ExpectedTensor {
  name: string;
  shape: number[];
}

/** Every tensor the model needs, by canonical name, with the shape the config implies. */
export function expectedTensors(config: ModelConfig): ExpectedTensor[] {
  const { dim, nHeads, nKvHeads, headDim, hiddenDim, vocabSize } = config;
  const list: ExpectedTensor[] = [{ name: 'tok_embeddings.weight', shape: [vocabSize, dim] }];
  for (let l = 0; l < config.nLayers; l++) {
    const p = `layers.${l}`;
    list.push(
      { name: `${p}.attention_norm.weight`, shape: [dim] },
      { name: `${p}.attention.wq.weight`, shape: [nHeads * headDim, dim] },
      { name: `${p}.attention.wk.weight`, shape: [nKvHeads * headDim, dim] },
      { name: `${p}.attention.wv.weight`, shape: [nKvHeads * headDim, dim] },
      { name: `${p}.attention.wo.weight`, shape: [dim, nHeads * headDim] },
      { name: `${p}.ffn_norm.weight`, shape: [dim] },
    );
    const ffn = (prefix: string) => [
      { name: `${prefix}.w1.weight`, shape: [hiddenDim, dim] },
      { name: `${prefix}.w2.weight`, shape: [dim, hiddenDim] },
      { name: `${prefix}.w3.weight`, shape: [hiddenDim, dim] },
    ];
    if (config.numExperts === 0) list.push(...ffn(`${p}.feed_forward`));
    else {
      list.push({ name: `${p}.feed_forward.gate.weight`, shape: [config.numExperts, dim] });
      for (let e = 0; e < config.numExperts; e++) list.push(...ffn(`${p}.feed_forward.experts.${e}`));
    }
  }
  list.push({ name: 'norm.weight', shape: [dim] });
  if (!config.tieEmbeddings) list.push({ name: 'output.weight', shape: [vocabSize, dim] });
  return list;
}

const HF_RENAMES: Array<[RegExp, string]> = [
  [/^tok_embeddings\.weight$/, 'model.embed_tokens.weight'],
  [/^norm\.weight$/, 'model.norm.weight'],
  [/^output\.weight$/, 'lm_head.weight'],
  [/^layers\.(\d+)\.attention_norm\.weight$/, 'model.layers.$1.input_layernorm.weight'],
  [/^layers\.(\d+)\.ffn_norm\.weight$/, 'model.layers.$1.post_attention_layernorm.weight'],
  [/^layers\.(\d+)\.attention\.wq\.weight$/, 'model.layers.$1.self_attn.q_proj.weight'],
  [/^layers\.(\d+)\.attention\.wk\.weight$/, 'model.layers.$1.self_attn.k_proj.weight'],
  [/^layers\.(\d+)\.attention\.wv\.weight$/, 'model.layers.$1.self_attn.v_proj.weight'],
  [/^layers\.(\d+)\.attention\.wo\.weight$/, 'model.layers.$1.self_attn.o_proj.weight'],
  [/^layers\.(\d+)\.feed_forward\.w1\.weight$/, 'model.layers.$1.mlp.gate_proj.weight'],
  [/^layers\.(\d+)\.feed_forward\.w3\.weight$/, 'model.layers.$1.mlp.up_proj.weight'],
  [/^layers\.(\d+)\.feed_forward\.w2\.weight$/, 'model.layers.$1.mlp.down_proj.weight'],
  [/^layers\.(\d+)\.feed_forward\.gate\.weight$/, 'model.layers.$1.block_sparse_moe.gate.weight'],
  [/^layers\.(\d+)\.feed_forward\.experts\.(\d+)\.(w[123])\.weight$/, 'model.layers.$1.block_sparse_moe.experts.$2.$3.weight'],
];

/** The tensor's name in the checkpoint's own layout. */
export function sourceTensorName(canonical: string, layout: CheckpointLayout): string {
  if (layout === 'native') return canonical;
  for (const [pattern, replacement] of HF_RENAMES) if (pattern.test(canonical)) return canonical.replace(pattern, replacement);
  throw modelError(`no Hugging Face name for tensor "${canonical}"`);
}

/**
 * Native → rotate-half row order for wq/wk (HF's `permute`:
 * `w.view(n_heads, hd/2, 2, dim).transpose(1, 2).reshape(n_heads*hd, dim)`).
 */
export function interleavedToRotateHalf(weight: Float32Array, heads: number, headDim: number, cols: number): Float32Array {
  const out = new Float32Array(weight.length);
  const half = headDim / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let part = 0; part < 2; part++) {
        const from = (h * headDim + 2 * i + part) * cols;
        const to = (h * headDim + part * half + i) * cols;
        out.set(weight.subarray(from, from + cols), to);
      }
    }
  }
  return out;
}

async function listWeightFiles(dir: string, layout: CheckpointLayout): Promise<string[]> {
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch (error) {
    throw modelError(`cannot read checkpoint folder ${dir}: ${(error as Error).message}`, error);
  }
  if (layout === 'hf' && entries.includes('model.safetensors.index.json')) {
    const indexPath = join(dir, 'model.safetensors.index.json');
    let weightMap: unknown;
    try {
      weightMap = (JSON.parse(await readFile(indexPath, 'utf8')) as { weight_map?: unknown }).weight_map;
    } catch (error) {
      throw modelError(`${indexPath} is not valid JSON: ${(error as Error).message}`, error);
    }
    if (typeof weightMap !== 'object' || weightMap === null) throw modelError(`${indexPath}: missing "weight_map"`);
    const files = [...new Set(Object.values(weightMap as Record<string, unknown>).map(String))].sort();
    for (const file of files) if (!entries.includes(file)) throw modelError(`${indexPath} lists ${file}, which is missing from ${dir}`);
    return files.map((f) => join(dir, f));
  }
  const pattern = layout === 'native' ? /^consolidated.*\.safetensors$/ : /^model.*\.safetensors$/;
  const files = entries.filter((f) => pattern.test(f)).sort();
  if (files.length === 0) {
    const pth = entries.filter((f) => f.endsWith('.pth') || f.endsWith('.bin'));
    const hint = pth.length ? ` (found ${pth.join(', ')}: PyTorch pickles are not supported, convert them to safetensors)` : '';
    const want = layout === 'native' ? 'consolidated*.safetensors' : 'model*.safetensors';
    throw modelError(`no weight files (${want}) in ${dir}${hint}`);
  }
  return files.map((f) => join(dir, f));
}

export class Checkpoint implements ModelSource {
  private constructor(
    readonly dir: string,
    readonly layout: CheckpointLayout,
    readonly config: ModelConfig,
    readonly configFile: string,
    private readonly files: SafetensorsFile[],
    private readonly located: Map<string, { file: SafetensorsFile; info: TensorInfo }>,
  ) {}

  static async open(dir: string): Promise<Checkpoint> {
    const { config, layout, file: configFile } = await readModelConfig(dir);
    const paths = await listWeightFiles(dir, layout);
    const files: SafetensorsFile[] = [];
    try {
      for (const path of paths) files.push(await SafetensorsFile.open(path));
      const bySourceName = new Map<string, SafetensorsFile>();
      for (const file of files) for (const name of file.tensors.keys()) bySourceName.set(name, file);

      const located = new Map<string, { file: SafetensorsFile; info: TensorInfo }>();
      for (const { name, shape } of expectedTensors(config)) {
        const sourceName = sourceTensorName(name, layout);
        const file = bySourceName.get(sourceName);
        if (!file) throw modelError(`tensor "${sourceName}" is missing from ${paths.map((p) => basename(p)).join(', ')} in ${dir}`);
        const info = file.tensors.get(sourceName) as TensorInfo;
        if (info.dtype !== 'F32' && info.dtype !== 'F16' && info.dtype !== 'BF16') {
          throw modelError(`${info.file}: tensor "${sourceName}" has unsupported dtype ${info.dtype} (expected F32, F16 or BF16)`);
        }
        if (info.shape.join(',') !== shape.join(',')) {
          throw modelError(
            `${info.file}: tensor "${sourceName}" has shape [${info.shape.join(', ')}] but ${basename(configFile)} implies [${shape.join(', ')}]`,
          );
        }
        located.set(name, { file, info });
      }
      return new Checkpoint(dir, layout, config, configFile, files, located);
    } catch (error) {
      await Promise.all(files.map((f) => f.close()));
      throw error;
    }
  }

  /** Reads one tensor by canonical name as float32, in the canonical (rotate-half) layout. */
  async read(name: string): Promise<Float32Array> {
    const source = name === 'output.weight' && this.config.tieEmbeddings ? 'tok_embeddings.weight' : name;
    const entry = this.located.get(source);
    if (!entry) throw modelError(`tensor "${name}" is not part of this model`);
    const data = await entry.file.readFloat32(entry.info.name);
    if (this.layout === 'native') {
      const { nHeads, nKvHeads, headDim, dim } = this.config;
      if (/\.attention\.wq\.weight$/.test(name)) return interleavedToRotateHalf(data, nHeads, headDim, dim);
      if (/\.attention\.wk\.weight$/.test(name)) return interleavedToRotateHalf(data, nKvHeads, headDim, dim);
    }
    return data;
  }

  /**
   * A fingerprint of the source: config bytes, and per weight file its name, size, header and a
   * sample of its data (start, middle, end). Cheap on 90 GB checkpoints, and any re-download or
   * edit of the weights changes the header or the sampled bytes in practice.
   */
  async sourceHash(): Promise<string> {
    const hash = createHash('sha256');
    hash.update(await readFile(this.configFile));
    for (const file of this.files) {
      hash.update(basename(file.path));
      hash.update(JSON.stringify([...file.tensors.values()].map((t) => [t.name, t.dtype, t.shape, t.byteOffset])));
      for (const info of file.tensors.values()) {
        if (info.byteLength <= 3 * 65536) hash.update(await file.readBytes(info.name));
      }
      const largest = [...file.tensors.values()].sort((a, b) => b.byteLength - a.byteLength)[0];
      if (largest && largest.byteLength > 3 * 65536) {
        for (const start of [0, Math.floor(largest.byteLength / 2), largest.byteLength - 65536]) {
          hash.update(await file.readBytes(largest.name, start, 65536));
        }
      }
    }
    return hash.digest('hex').slice(0, 24);
  }

  /** Tokenizer files to carry into a store, when the checkpoint has them. */
  async tokenizerFiles(): Promise<string[]> {
    const entries = await readdir(this.dir);
    return ['tokenizer.json', 'tokenizer.model', 'tokenizer_config.json'].filter((f) => entries.includes(f)).map((f) => join(this.dir, f));
  }

  get path(): string {
    return this.dir;
  }

  get defaultName(): string {
    return basename(this.dir);
  }

  async close(): Promise<void> {
    await Promise.all(this.files.map((f) => f.close()));
  }
}
