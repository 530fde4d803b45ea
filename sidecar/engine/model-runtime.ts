/**
 * The model runtime: load a converted store and run batched forward steps over sequences whose KV
 * caches live in JS.
 *
 * Dense Mistral runs one decoder session per step. Mixtral runs, per layer, its attention (one
 * native call on a quantised store's layer files, layers/native-attention.ts, else the layer's
 * onnxruntime session) and then the routed experts from JS (moe.ts), and finally the head (the
 * native one on those stores, layers/native-head.ts, else the head session).
 */
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { invalidRequest, modelError } from '../errors.ts';
import { type Architecture, asOneExpert, type ModelConfig } from '../formats/model-config.ts';
import { MIN_MATMUL_ROWS, type Precision } from '../formats/quantize.ts';
import { isStore, MANIFEST_FILE, type Manifest, readManifest } from '../formats/store-manifest.ts';
import { IO } from '../graph/models.ts';
import { createSession, type Device, type SessionSettings } from './device.ts';
import type { EvictionPolicy, ExpertCacheStats } from './experts/expert-cache.ts';
import { loadNativeGemm, type NativeGemm } from './experts/native-gemm.ts';
import { PagedExperts } from './experts/paged-experts.ts';
import { BatchedPast, BatchStep, type CacheShape, SequenceCache, type StepEntry } from './kv-cache.ts';
import { autoKvReserveBytes, KvBufferPool, type KvReserveStats } from './kv-memory.ts';
import type { LayerAttention, StepAttention } from './layers/layer-attention.ts';
import { readLayerStore } from './layers/layer-store.ts';
import { NativeLayerAttention } from './layers/native-attention.ts';
import { type LogitHead, layerProductsAgree, NativeHead } from './layers/native-head.ts';
import { type ExpertProvider, ResidentExpertProvider, routeTopK, runExperts } from './moe.ts';
import { RopeTable } from './rope.ts';

export interface ModelInfo {
  name: string;
  architecture: Architecture;
  vocabSize: number;
  contextLength: number;
  slidingWindow: number | null;
  bosId: number;
  eosId: number;
  precision: Precision;
}

/** The experts one step chose: per layer, per entry, per new token the top-k ids (best first). */
export interface RoutingEvent {
  layer: number;
  sequences: Sequence[];
  experts: number[][][];
}

export interface LoadOptions {
  /** The precision the caller expects: a store holding another one is refused with a clear error. */
  precision?: Precision;
  device?: Device;
  threads?: number;
  /**
   * Mixtral: page experts from the store's block files (Q4_0 or Q8_0, as converted) through a
   * cache of this many MiB (fractional allowed) instead of keeping every expert resident. Logits
   * are bit-identical for every budget and to no budget at all (int4 / int8 stores: the same files
   * and kernel either way; fp32 stores keep exact experts unless paged). 'auto': sized from
   * available memory, every expert when they fit (fp32 stores: their exact experts). Ignored for
   * dense models.
   */
  expertCacheMb?: number | 'auto';
  /** Expert cache tuning (benchmarks): eviction policy (default lfu) and next-layer prefetch (default on). */
  expertCache?: { policy?: EvictionPolicy; prefetch?: boolean };
  /** Called with each expert page-in's latency in seconds (the sidecar's /metrics histogram). */
  onExpertPageIn?: (seconds: number) => void;
  /**
   * How each layer up to its experts (a dense model's: up to its FFN), and the head, run: 'native'
   * (the default where the store has native layer files and this host the native addon; for a
   * dense store only where that was measured faster than its decoder graph, AVX2 without VNNI) or
   * 'onnx' (the store's graphs), e.g. to compare them.
   */
  attention?: 'native' | 'onnx';
  /** Debug hook: called after each Mixtral layer's routing. */
  onRouting?: (event: RoutingEvent) => void;
  /**
   * KV memory allocated and faulted in at load, in MiB, from which the sequences' caches and the
   * batch's past tensors are carved first; beyond it they are allocated as needed. 'auto': room for
   * `maxSequences` sequences of 256 tokens, at most 1 GiB (kv-memory.ts). Default none: one-off runs.
   */
  kvCacheMb?: number | 'auto';
  /** The most sequences decoded together: what `kvCacheMb: 'auto'` plans for (default 16). */
  maxSequences?: number;
}

export interface Sequence {
  readonly id: number;
  /** Tokens already in its KV cache. */
  readonly length: number;
}

export interface ForwardEntry {
  sequence: Sequence;
  tokens: number[];
}

export interface ModelRuntime {
  readonly info: ModelInfo;
  /** The store folder (tokenizer.json / tokenizer.model copied here when the checkpoint had one). */
  readonly dir: string;
  createSequence(): Sequence;
  /**
   * One step over a batch. Returns per entry the logits of its last new position ([vocabSize]),
   * or of all its new positions ([n × vocabSize]) with `allPositions`. Not re-entrant.
   */
  forward(batch: ForwardEntry[], options?: { allPositions?: boolean }): Promise<Float32Array[]>;
  releaseSequence(sequence: Sequence): void;
  /** Expert-cache statistics when experts run from their block files (resident or paged), else null. */
  expertCacheStats?(): ExpertCacheStats | null;
  /** How the expert budget was chosen, when experts run from their block files. */
  expertBudgetReason?(): string | null;
  /** Mixtral: what runs each layer up to its experts and the head (native, or onnxruntime graphs). */
  layerPath?(): string | null;
  /** KV memory reserved at load (bytes) and how much of it the caches hold now. */
  kvReserve?(): KvReserveStats;
  dispose(): Promise<void>;
}

/** Runs the graphs for one step; returns logits [rows, vocab] for `rows` (flat b*S+i indices). */
interface StepRunner {
  /** A step's rows, and the logits' rows, must be a multiple of this (see LayerAttention.rowMultiple). */
  readonly rowMultiple: number;
  run(step: BatchStep, rows: BigInt64Array): Promise<Float32Array>;
  dispose(): Promise<void>;
}

function tensor(data: Float32Array, dims: number[]): ort.Tensor {
  return new ort.Tensor('float32', data, dims);
}

/** The attention inputs every layer of one step shares: RoPE table rows, positions and the mask. */
function stepFeeds(step: BatchStep, config: ModelConfig, rope: RopeTable): Record<string, ort.Tensor> {
  // onnxruntime's RotaryEmbedding wants at least S table rows, even where S is mostly padding.
  const rows = Math.max(step.positionCount, step.seq);
  const { cos, sin } = rope.upTo(rows);
  const half = config.headDim / 2;
  return {
    [IO.cos]: tensor(cos, [rows, half]),
    [IO.sin]: tensor(sin, [rows, half]),
    [IO.positions]: new ort.Tensor('int64', step.positions(), [step.batch, step.seq]),
    [IO.mask]: tensor(step.mask(), [step.batch, 1, step.seq, step.total]),
  };
}

/** `shared` plus the past keys and values of `layerRange`. */
function attentionFeeds(step: BatchStep, config: ModelConfig, shared: Record<string, ort.Tensor>, layerRange: number[]) {
  const feeds: Record<string, ort.Tensor> = { ...shared };
  const pastDims = [step.batch, config.nKvHeads, step.past, config.headDim];
  for (const layer of layerRange) {
    feeds[IO.pastKey(layer)] = tensor(step.pastTensor(layer, 'keys'), pastDims);
    feeds[IO.pastValue(layer)] = tensor(step.pastTensor(layer, 'values'), pastDims);
  }
  return feeds;
}

/** A graph's float32 output by name; a graph without it does not match this build's runtime. */
function output(outputs: ort.InferenceSession.OnnxValueMapType, name: string, graph: string): Float32Array {
  const value = outputs[name];
  if (!value) throw modelError(`the ${graph} graph returned no ${name} output; convert the checkpoint again`);
  return value.data as Float32Array;
}

function storeNewKv(step: BatchStep, layer: number, outputs: ort.InferenceSession.OnnxValueMapType, graph: string): void {
  step.store(layer, 'keys', output(outputs, IO.newKey(layer), graph));
  step.store(layer, 'values', output(outputs, IO.newValue(layer), graph));
}

class DenseRunner implements StepRunner {
  readonly rowMultiple = MIN_MATMUL_ROWS;
  private readonly rope: RopeTable;

  constructor(
    private readonly session: ort.InferenceSession,
    private readonly config: ModelConfig,
  ) {
    this.rope = new RopeTable(config.headDim, config.ropeTheta);
  }

  async run(step: BatchStep, rows: BigInt64Array): Promise<Float32Array> {
    const layers = Array.from({ length: this.config.nLayers }, (_, l) => l);
    const feeds = attentionFeeds(step, this.config, stepFeeds(step, this.config, this.rope), layers);
    feeds[IO.inputIds] = new ort.Tensor('int64', step.inputIds(), [step.batch, step.seq]);
    feeds[IO.logitRows] = new ort.Tensor('int64', rows, [rows.length]);
    const outputs = await this.session.run(feeds);
    for (const layer of layers) storeNewKv(step, layer, outputs, 'decoder');
    return output(outputs, IO.logits, 'decoder');
  }

  async dispose(): Promise<void> {
    await this.session.release();
  }
}

/** The store's ONNX layer graphs: one onnxruntime run per layer. */
class OnnxLayerAttention implements LayerAttention {
  readonly name = 'onnxruntime layer graphs';
  readonly rowMultiple = MIN_MATMUL_ROWS;
  private readonly rope: RopeTable;

  constructor(
    private readonly sessions: ort.InferenceSession[],
    private readonly config: ModelConfig,
  ) {
    this.rope = new RopeTable(config.headDim, config.ropeTheta);
  }

  forStep(step: BatchStep): StepAttention {
    const shared = stepFeeds(step, this.config, this.rope);
    return {
      run: async (layer, hidden) => {
        const feeds = attentionFeeds(step, this.config, shared, [layer]);
        if (hidden === null) feeds[IO.inputIds] = new ort.Tensor('int64', step.inputIds(), [step.batch, step.seq]);
        else feeds[IO.hidden] = tensor(hidden, [step.batch, step.seq, this.config.dim]);
        const outputs = await this.sessions[layer]!.run(feeds);
        const graph = `layer ${layer}`;
        storeNewKv(step, layer, outputs, graph);
        return {
          residual: output(outputs, IO.hiddenOut, graph),
          ffnIn: output(outputs, IO.ffnIn, graph),
          router: output(outputs, IO.routerLogits, graph),
        };
      },
    };
  }

  async dispose(): Promise<void> {
    await Promise.all(this.sessions.map((session) => session.release()));
  }
}

class MoeRunner implements StepRunner {
  readonly rowMultiple: number;

  constructor(
    private readonly attention: LayerAttention,
    private readonly head: LogitHead,
    private readonly experts: ExpertProvider,
    private readonly config: ModelConfig,
    private readonly onRouting?: (event: RoutingEvent) => void,
  ) {
    // Both are 1 (native) or both MIN_MATMUL_ROWS (onnxruntime); the larger covers either.
    this.rowMultiple = Math.max(attention.rowMultiple, head.rowMultiple);
  }

  async run(step: BatchStep, rows: BigInt64Array): Promise<Float32Array> {
    const { dim, numExperts, expertsPerToken: k, nLayers } = this.config;
    // Only real (unpadded) positions go through the experts; padding rows get no FFN update.
    const realRows: number[] = [];
    for (const [b, e] of step.entries.entries()) {
      for (let i = 0; i < e.tokens.length; i++) realRows.push(b * step.seq + i);
    }

    // Without padding rows (native decode steps) the real rows are all rows, in order: the layer's
    // outputs serve as they are, with no copies.
    const allRows = realRows.length === step.batch * step.seq;
    const realRowsOf = (from: Float32Array, width: number) => {
      if (allRows) return from;
      const out = new Float32Array(realRows.length * width);
      for (const [i, row] of realRows.entries()) out.set(from.subarray(row * width, (row + 1) * width), i * width);
      return out;
    };
    let hidden: Float32Array | null = null;
    const attention = this.attention.forStep(step);
    for (let layer = 0; layer < nLayers; layer++) {
      const { residual, ffnIn, router } = await attention.run(layer, hidden);
      const routing = routeTopK(realRowsOf(router, numExperts), realRows.length, numExperts, k);
      if (this.onRouting) this.reportRouting(step, layer, routing.experts);
      this.experts.beginLayer?.(layer, routing.experts, { data: realRowsOf(residual, dim), rows: realRows.length });
      const moe = await runExperts(this.experts, layer, realRowsOf(ffnIn, dim), realRows.length, dim, routing, k);
      // The residual is this step's own array (LayerOutputs): the experts' sums go into it in place.
      realRows.forEach((row, i) => {
        for (let d = 0; d < dim; d++) residual[row * dim + d]! += moe[i * dim + d]!;
      });
      hidden = residual;
    }
    return this.head.run(hidden as Float32Array, rows);
  }

  private reportRouting(step: BatchStep, layer: number, experts: Int32Array): void {
    const k = this.config.expertsPerToken;
    let slot = 0;
    const perEntry = step.entries.map((e) => e.tokens.map(() => Array.from(experts.subarray(slot * k, ++slot * k))));
    this.onRouting?.({ layer, sequences: step.entries.map((e) => e.cache), experts: perEntry });
  }

  async dispose(): Promise<void> {
    await Promise.all([this.attention.dispose(), this.head.dispose(), this.experts.dispose()]);
  }
}

/** The store's head graph (final norm and lm_head) in onnxruntime. */
class OnnxHead implements LogitHead {
  readonly rowMultiple = MIN_MATMUL_ROWS;
  constructor(
    private readonly session: ort.InferenceSession,
    private readonly dim: number,
  ) {}

  async run(hidden: Float32Array, rows: BigInt64Array): Promise<Float32Array> {
    const out = await this.session.run({
      [IO.hidden]: tensor(hidden, [1, hidden.length / this.dim, this.dim]),
      [IO.logitRows]: new ort.Tensor('int64', rows, [rows.length]),
    });
    return output(out, IO.logits, 'head');
  }

  async dispose(): Promise<void> {
    await this.session.release();
  }
}

class EngineRuntime implements ModelRuntime {
  private readonly sequences = new Map<number, SequenceCache>();
  private nextId = 1;
  private readonly batchedPast: BatchedPast;
  constructor(
    readonly info: ModelInfo,
    readonly dir: string,
    private readonly cacheShape: CacheShape,
    private readonly runner: StepRunner,
    /** Every sequence's and the batched past's buffers come from, and go back to, this pool. */
    private readonly kvPool: KvBufferPool,
    private readonly pagedExperts: PagedExperts | null = null,
    private readonly layerPathName: string | null = null,
  ) {
    this.batchedPast = new BatchedPast(this.cacheShape, this.kvPool);
  }

  createSequence(): Sequence {
    const cache = new SequenceCache(this.nextId++, this.cacheShape, this.kvPool);
    this.sequences.set(cache.id, cache);
    return cache;
  }

  releaseSequence(sequence: Sequence): void {
    this.sequences.get(sequence.id)?.release();
    this.sequences.delete(sequence.id);
  }

  expertCacheStats(): ExpertCacheStats | null {
    return this.pagedExperts?.stats() ?? null;
  }

  /** How the expert budget was chosen (block experts), for the operator's log. */
  expertBudgetReason(): string | null {
    return this.pagedExperts?.budgetReason ?? null;
  }

  layerPath(): string | null {
    return this.layerPathName;
  }

  /** Checks a batch and pairs each entry with its cache. */
  private validate(batch: ForwardEntry[]): StepEntry[] {
    if (batch.length === 0) throw invalidRequest('forward needs at least one sequence');
    const seen = new Set<number>();
    return batch.map(({ sequence, tokens }) => {
      const cache = this.sequences.get(sequence.id);
      if (!cache || cache !== sequence)
        throw invalidRequest(`sequence ${sequence.id} is not active on this model (released or from another model)`);
      if (seen.has(sequence.id)) throw invalidRequest(`sequence ${sequence.id} appears twice in one batch`);
      seen.add(sequence.id);
      if (!Array.isArray(tokens) || tokens.length === 0) throw invalidRequest('each batch entry needs at least one token', 'tokens');
      tokens.forEach((t, i) => {
        if (!Number.isInteger(t) || t < 0 || t >= this.info.vocabSize) {
          throw invalidRequest(`token id ${t} at position ${i} is outside the vocabulary [0, ${this.info.vocabSize})`, 'tokens');
        }
      });
      if (cache.length + tokens.length > this.info.contextLength) {
        throw invalidRequest(
          `sequence would reach ${cache.length + tokens.length} tokens, beyond the model's context length of ${this.info.contextLength}`,
          'tokens',
        );
      }
      return { cache, tokens };
    });
  }

  async forward(batch: ForwardEntry[], options: { allPositions?: boolean } = {}): Promise<Float32Array[]> {
    const step = new BatchStep(this.validate(batch), this.cacheShape, this.batchedPast, this.runner.rowMultiple);
    const rows: number[] = [];
    batch.forEach((e, b) => {
      const first = options.allPositions ? 0 : e.tokens.length - 1;
      for (let i = first; i < e.tokens.length; i++) rows.push(b * step.seq + i);
    });
    // lm_head rows come in the runner's multiple like every matmul's (see BatchStep); extra rows
    // are dropped. validate() refuses an empty batch or entry, so there is a first row to repeat.
    while (rows.length % this.runner.rowMultiple !== 0) rows.push(rows[0]!);
    const logits = await this.runner.run(step, BigInt64Array.from(rows.map(BigInt)));
    step.commit();
    const vocab = this.info.vocabSize;
    let offset = 0;
    // Views of the step's own logits: each entry's rows are its alone to read or mask.
    return batch.map((e) => {
      const count = options.allPositions ? e.tokens.length : 1;
      const rowsOf = logits.subarray(offset * vocab, (offset + count) * vocab);
      offset += count;
      return rowsOf;
    });
  }

  kvReserve(): KvReserveStats {
    return this.kvPool.reserve;
  }

  async dispose(): Promise<void> {
    for (const cache of this.sequences.values()) cache.release();
    this.sequences.clear();
    this.batchedPast.clear();
    this.kvPool.clear();
    await this.runner.dispose();
  }
}

interface LayersAndHead {
  attention: LayerAttention;
  head: LogitHead;
  name: string;
}

/**
 * The native attention layers and head where the store has their files, this host the native
 * addon (CPU only) and `wanted` takes its instruction set, unless the caller asked for the graphs;
 * null otherwise. `config` is the model as its layer files see it (a dense one as one expert).
 */
async function nativeLayersAndHead(
  storeDir: string,
  manifest: Manifest,
  config: ModelConfig,
  settings: SessionSettings,
  choice: LoadOptions['attention'],
  wanted: (gemm: NativeGemm) => boolean,
): Promise<LayersAndHead | null> {
  const { nativeLayers } = manifest;
  if (!nativeLayers || settings.device !== 'cpu' || choice === 'onnx' || !NativeHead.fits(config.vocabSize)) return null;
  const { gemm } = loadNativeGemm();
  if (!gemm || !wanted(gemm) || !layerProductsAgree(gemm)) return null;
  // The head file's bytes are copied into the head's shared memory, and not kept.
  const { head: headFile, ...layerFiles } = await readLayerStore(storeDir, config, nativeLayers.format);
  const attention = new NativeLayerAttention(layerFiles, config, gemm, settings.threads);
  return { attention, head: new NativeHead(headFile, config, gemm, settings.threads), name: `${attention.name} and head` };
}

/** A Mixtral store's native layers and head (nativeLayersAndHead), else its ONNX layer and head graphs. */
async function mixtralLayersAndHead(
  storeDir: string,
  manifest: Manifest,
  settings: SessionSettings,
  choice: LoadOptions['attention'],
): Promise<LayersAndHead> {
  const { config, graphs } = manifest;
  const native = await nativeLayersAndHead(storeDir, manifest, config, settings, choice, () => true);
  if (native) return native;
  const sessions = [];
  for (const layer of graphs.layers ?? []) sessions.push(await createSession(join(storeDir, layer.graph), settings));
  const attention = new OnnxLayerAttention(sessions, config);
  const head = new OnnxHead(await createSession(join(storeDir, graphs.head!.graph), settings), config.dim);
  return { attention, head, name: attention.name };
}

/**
 * Dense stores run natively, as one-expert Mixtrals, where that was measured faster than their
 * decoder graph: AVX2 without VNNI (a lone stream 1.3× in bench:engine, par at 8 streams and on
 * prompts, the attention over a long context several times faster; docs/expert-paging.md). With VNNI,
 * onnxruntime's int4 kernels were the faster when last measured; `attention: 'native'` asks for
 * the native path anyway.
 */
const denseRunsNatively = (choice: LoadOptions['attention']) => (gemm: NativeGemm) => choice === 'native' || gemm.isa === 'avx2';

/** Loads a converted store (see convert/loader.ts for checkpoint folders, converted once). */
export async function loadModel(storeDir: string, options: LoadOptions = {}): Promise<ModelRuntime> {
  if (!(await isStore(storeDir))) {
    throw modelError(`${storeDir} is not a converted store (no ${MANIFEST_FILE}); convert it with \`sirocco convert\` first`);
  }
  const manifest: Manifest = await readManifest(storeDir);
  if (options.precision && options.precision !== manifest.precision) {
    throw modelError(
      `store ${storeDir} holds ${manifest.precision} weights, not ${options.precision}; convert the checkpoint with --precision ${options.precision}`,
    );
  }
  const { config } = manifest;
  const settings: SessionSettings = { device: options.device ?? 'cpu', threads: options.threads ?? 2 };
  const path = (file: string) => join(storeDir, file);
  const cacheShape: CacheShape = {
    layers: config.nLayers,
    kvHeads: config.nKvHeads,
    headDim: config.headDim,
    window: config.slidingWindow,
  };
  // Reserved before the experts open, so that `--expert-cache-mb auto` sees its memory as taken.
  const reserveBytes =
    options.kvCacheMb === 'auto' ? autoKvReserveBytes(cacheShape, options.maxSequences ?? 16) : (options.kvCacheMb ?? 0) * 2 ** 20;
  const kvPool = new KvBufferPool({ reserveBytes });

  let runner: StepRunner;
  let paged: PagedExperts | null = null;
  let layerPath: string | null = null;
  const { decoder, layers, experts, head } = manifest.graphs;
  if (config.numExperts === 0) {
    const oneExpert = asOneExpert(config);
    const native = await nativeLayersAndHead(
      storeDir,
      manifest,
      oneExpert,
      settings,
      options.attention,
      denseRunsNatively(options.attention),
    );
    if (native) {
      // The FFN is the model's own, not a cache of experts: always resident, whatever
      // --expert-cache-mb asks of Mixtral models, and not reported as an expert cache.
      const ffn = await PagedExperts.open(storeDir, { budgetMb: 'all', prefetch: false, ...settings });
      layerPath = native.name;
      runner = new MoeRunner(native.attention, native.head, ffn, oneExpert);
    } else {
      if (!decoder) throw modelError(`${path('manifest.json')}: dense model without a decoder graph`);
      runner = new DenseRunner(await createSession(path(decoder.graph), settings), config);
    }
  } else {
    if (!layers || !head) throw modelError(`${path('manifest.json')}: Mixtral store without layer or head graphs`);
    if (layers.length !== config.nLayers) {
      throw modelError(`${path('manifest.json')}: ${layers.length} layer graphs for ${config.nLayers} layers; convert it again`);
    }
    const { attention, head: logitHead, name } = await mixtralLayersAndHead(storeDir, manifest, settings, options.attention);
    layerPath = name;
    let provider: ExpertProvider;
    // fp32 stores: exact per-expert graphs, the reference for the quantised formats. A store without
    // them (an empty list included) runs its experts from their block files.
    if (experts?.length && (options.expertCacheMb === undefined || options.expertCacheMb === 'auto')) {
      provider = await ResidentExpertProvider.load(
        experts.map((row) => row.map((e) => path(e.graph))),
        config.dim,
        settings,
      );
    } else {
      paged = await PagedExperts.open(storeDir, {
        budgetMb: options.expertCacheMb ?? 'all',
        ...options.expertCache,
        ...settings,
        onPageIn: options.onExpertPageIn,
      });
      provider = paged;
    }
    runner = new MoeRunner(attention, logitHead, provider, config, options.onRouting);
  }
  const info: ModelInfo = {
    name: manifest.name,
    architecture: config.architecture,
    vocabSize: config.vocabSize,
    contextLength: config.contextLength,
    slidingWindow: config.slidingWindow,
    bosId: config.bosId,
    eosId: config.eosId,
    precision: manifest.precision,
  };
  return new EngineRuntime(info, storeDir, cacheShape, runner, kvPool, paged, layerPath);
}
