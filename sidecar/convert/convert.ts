/**
 * Checkpoint folder or GGUF file → store conversion: reads the source tensor by tensor, builds the ONNX graphs at the
 * requested precision, copies tokenizer files, writes the manifest. Everything is written into a
 * temporary sibling folder that is renamed into place at the end, so a failure leaves nothing
 * half-written at the destination.
 */
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, readdir, rename, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { buildExpertStore, type ExpertBits } from '../engine/experts/expert-store.ts';
import { LAYER_FORMAT, layerStoreFits, writeLayerStore } from '../engine/layers/layer-store.ts';
import { modelError, SidecarError } from '../errors.ts';
import { expectedTensors } from '../formats/checkpoint.ts';
import type { ModelSource } from '../formats/model-source.ts';
import { oneExpertSource } from '../formats/one-expert-source.ts';
import { openModelSource } from '../formats/open-model-source.ts';
import { type Precision, type QuantizationPlan, quantizationPlan } from '../formats/quantize.ts';
import { FORMAT_VERSION, MANIFEST_FILE, type Manifest } from '../formats/store-manifest.ts';
import { type BuildContext, buildDecoderGraph, buildExpertGraph, buildHeadGraph, buildMoeLayerGraph } from '../graph/models.ts';
import { CHAT_TEMPLATE_FILE } from '../text/chat-template.ts';
import { sentencePiecesToTokenizerJson } from '../text/tokenizer.ts';

export type { Precision } from '../formats/quantize.ts';
export type { Manifest } from '../formats/store-manifest.ts';

export const PRECISIONS: readonly Precision[] = ['fp32', 'int8', 'int4'];

export interface ConvertOptions {
  from: string;
  to: string;
  precision: Precision;
  onProgress?: (done: number, total: number, label: string) => void;
  /** Model name recorded in the manifest; defaults to the source folder's name (a GGUF file's, without .gguf). */
  name?: string;
  /**
   * Mixtral: the experts' block format (expert-store.ts): 4 = Q4_0, 8 = Q8_0. Default: a GGUF file's
   * own Q4_0 / Q8_0, else 4 for int4 stores and 8 otherwise (fp32 stores use these files only when
   * paging with --expert-cache-mb).
   */
  expertBits?: ExpertBits;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

async function isNonEmptyDir(path: string): Promise<boolean> {
  try {
    return (await readdir(path)).length > 0;
  } catch {
    return false;
  }
}

async function buildGraphs(ctx: BuildContext): Promise<Manifest['graphs']> {
  if (ctx.config.numExperts === 0) return { decoder: await buildDecoderGraph(ctx) };
  const layers = [];
  const experts = [];
  for (let layer = 0; layer < ctx.config.nLayers; layer++) {
    layers.push(await buildMoeLayerGraph(ctx, layer));
    // Quantised stores run their experts from the block files (expert-store.ts), resident or
    // paged; only fp32 keeps exact per-expert graphs, the reference the quantised ones are judged by.
    if (ctx.precision !== 'fp32') continue;
    const perLayer = [];
    for (let expert = 0; expert < ctx.config.numExperts; expert++) perLayer.push(await buildExpertGraph(ctx, layer, expert));
    experts.push(perLayer);
  }
  return { layers, ...(experts.length > 0 ? { experts } : {}), head: await buildHeadGraph(ctx) };
}

/**
 * Mixtral expert files: the source's own block format when it has one (a GGUF file's Q4_0 / Q8_0
 * experts are then copied, not rounded again), else Q4_0 for int4 stores and Q8_0 otherwise.
 */
function defaultExpertBits(source: ModelSource, precision: Precision): ExpertBits {
  const format = source.blockFormatOf?.('layers.0.feed_forward.experts.0.w1.weight');
  if (format) return format === 'q4_0' ? 4 : 8;
  return precision === 'int4' ? 4 : 8;
}

/**
 * The precision's plan, except that at int4 a matrix the source holds as Q4_0 (a GGUF file's) is
 * quantised in blocks of 32, its own: its values are then represented exactly (the searched scale
 * finds Q4_0's d), where the default blocks of 128 would round them a second time.
 */
function planFor(precision: Precision, source: ModelSource, tensors: string[]): QuantizationPlan | undefined {
  if (precision === 'fp32') return undefined;
  const plan = quantizationPlan(precision);
  if (precision !== 'int4' || !source.blockFormatOf) return plan;
  for (const name of tensors) {
    if (plan.overrides[name] || name.includes('.experts.')) continue; // experts: block files of their own
    if (source.blockFormatOf(name) === 'q4_0') plan.overrides[name] = { ...plan.linears, blockSize: 32 };
  }
  return plan;
}

export async function convertCheckpoint(options: ConvertOptions): Promise<Manifest> {
  const { precision, onProgress } = options;
  if (!PRECISIONS.includes(precision)) throw modelError(`unknown precision "${precision}" (expected ${PRECISIONS.join(', ')})`);
  const from = resolve(options.from);
  const to = resolve(options.to);
  if (await isNonEmptyDir(to)) throw modelError(`destination ${to} already exists and is not empty; choose a new folder`);
  if (!(await exists(from))) throw modelError(`checkpoint folder or GGUF file ${from} does not exist`);

  const source = await openModelSource(from);
  const staging = join(dirname(to), `.${basename(to)}.partial-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    await mkdir(staging, { recursive: true });
    const { config } = source;
    const tensors = expectedTensors(config);
    const total = tensors.length;
    let done = 0;
    onProgress?.(0, total, 'reading checkpoint');
    const weights = {
      read: async (name: string) => {
        const data = await source.read(name);
        onProgress?.(++done, total, name);
        return data;
      },
    };
    const quantization = planFor(
      precision,
      source,
      tensors.map((t) => t.name),
    );
    const graphs = await buildGraphs({ dir: staging, config, precision, weights, quantization });
    // Mixtral: also the per-expert files that `--expert-cache-mb` pages from (expert-store.ts);
    // a GGUF file's experts already in that block format are copied as they are.
    let nativeLayers: Manifest['nativeLayers'];
    if (config.numExperts > 0) {
      const expertBits = options.expertBits ?? defaultExpertBits(source, precision);
      await buildExpertStore(source, staging, expertBits);
      // …and, quantised, each layer up to its experts as blocks, for the native attention layer.
      if (precision !== 'fp32' && layerStoreFits(config)) {
        await writeLayerStore(source, staging, config);
        nativeLayers = { format: LAYER_FORMAT };
      }
    } else if (precision === 'int4' && layerStoreFits(config)) {
      // A dense model at int4: the same files for it seen as a one-expert Mixtral, which the
      // runtime runs natively where that is measured faster than its decoder graph. Not at int8,
      // whose graph keeps fp32 activations (and fp32's greedy output on the golden model, which
      // activations rounded to int8 per block lose).
      const view = oneExpertSource(source);
      await buildExpertStore(view, staging, options.expertBits ?? defaultExpertBits(view, precision));
      await writeLayerStore(view, staging, view.config);
      nativeLayers = { format: LAYER_FORMAT };
    }
    for (const file of await source.tokenizerFiles()) await copyFile(file, join(staging, basename(file)));
    // A GGUF file's vocabulary becomes the store's tokenizer.json.
    const vocabulary = source.vocabulary?.();
    if (vocabulary) {
      const json = sentencePiecesToTokenizerJson(vocabulary.pieces, vocabulary.addDummyPrefix);
      await writeFile(join(staging, 'tokenizer.json'), JSON.stringify(json));
    }
    // …and its chat template, when it has one, the store's (text/chat-template.ts).
    const chatTemplate = source.chatTemplate?.();
    if (chatTemplate) await writeFile(join(staging, CHAT_TEMPLATE_FILE), chatTemplate);

    const files = [];
    for (const file of (await readdir(staging)).sort()) files.push({ path: file, bytes: (await stat(join(staging, file))).size });
    const manifest: Manifest = {
      formatVersion: FORMAT_VERSION,
      name: options.name ?? source.defaultName,
      sourceHash: await source.sourceHash(),
      precision,
      ...(quantization ? { quantization } : {}),
      architecture: config.architecture,
      config,
      tensors: Object.fromEntries(tensors.map((t) => [t.name, t.shape])),
      graphs,
      ...(nativeLayers ? { nativeLayers } : {}),
      files,
    };
    await writeFile(join(staging, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
    await mkdir(dirname(to), { recursive: true });
    // An empty destination folder may be replaced; a store another process just finished may not.
    await rmdir(to).catch(() => undefined);
    await rename(staging, to).catch((error: NodeJS.ErrnoException) => {
      throw modelError(`destination ${to} appeared while converting (${error.code}); another conversion finished first`, error);
    });
    return manifest;
  } catch (error) {
    await rm(staging, { recursive: true, force: true });
    if (error instanceof SidecarError) throw error;
    throw modelError(`converting ${from} failed: ${(error as Error).message}`, error);
  } finally {
    await source.close();
  }
}
