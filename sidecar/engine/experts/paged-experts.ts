/**
 * Running paged experts. For int8 stores, `ExpertGraph` is one shared onnxruntime session that
 * runs ANY expert: the SwiGLU FFN `w2(silu(w1·x) ⊙ w3·x)` with the int8 weights and their
 * per-column scales fed as graph inputs to DynamicQuantizeMatMul. int4 stores run their experts
 * through our own WebAssembly kernel straight from the packed bytes (expert-kernel.ts). Either
 * way a page-in is a plain read of bytes — no session per expert — and every expert runs through
 * the same kernel whatever is resident, which is what makes the output bit-identical across cache
 * budgets. `PagedExperts` is what the Mixtral runtime calls per layer: store + cache + kernel +
 * next-layer prefetch.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { modelError, SidecarError } from '../../errors.ts';
import { ExternalDataWriter, GraphBuilder, MS_DOMAIN } from '../../graph/onnx-graph.ts';
import { cpuHasExactInt8DotProduct, createSession, type Device } from '../device.ts';
import type { Expert, ExpertProvider } from '../moe.ts';
import { type EvictionPolicy, ExpertCache, type ExpertCacheStats, type ExpertLease, RouterPredictor } from './expert-cache.ts';
import { Int4ExpertKernel } from './expert-kernel.ts';
import { ExpertStore, type ExpertStoreIndex, type ExpertWeights, type Int8ExpertWeights } from './expert-store.ts';

export interface ExpertGraphOptions {
  threads?: number;
  device?: Device;
  /** Feed the weights as uint8 (exact on every CPU); default: only where int8 products saturate. */
  unsignedWeights?: boolean;
}

/**
 * Builds the expert FFN graph for a given width into `path` (no weights inside it). With
 * `unsignedWeights` the weights come in as uint8 with zero point 128 (the int8 bytes with their
 * sign bit flipped), so onnxruntime takes its exact u8×u8 path: see cpuHasExactInt8DotProduct.
 */
function buildExpertGraph(path: string, dim: number, ffn: number, unsignedWeights: boolean): void {
  const external = new ExternalDataWriter(`${path}.data`);
  try {
    const g = new GraphBuilder('expert_ffn', external);
    const weightType = unsignedWeights ? 'uint8' : 'int8';
    const x = g.input('x', 'float32', ['rows', dim]);
    const w13 = g.input('w13', weightType, [dim, 2 * ffn]);
    const s13 = g.input('s13', 'float32', [2 * ffn]);
    const w2 = g.input('w2', weightType, [ffn, dim]);
    const s2 = g.input('s2', 'float32', [dim]);
    const zeroPoints = (count: number): string[] =>
      unsignedWeights ? [g.initializer(`zero_point_${count}`, 'uint8', [count], new Uint8Array(count).fill(128))] : [];
    // w1 and w3 are one [dim, 2·ffn] matrix so both projections cost one pass over x.
    const h = g.op('DynamicQuantizeMatMul', [x, w13, s13, ...zeroPoints(2 * ffn)], undefined, MS_DOMAIN);
    const [gate, up] = g.split(h, [ffn, ffn], 1);
    const silu = g.op('Mul', [gate, g.op('Sigmoid', [gate])]);
    const y = g.op('DynamicQuantizeMatMul', [g.op('Mul', [silu, up]), w2, s2, ...zeroPoints(dim)], undefined, MS_DOMAIN);
    g.output(y, 'y', 'float32', ['rows', dim]);
    g.save(path);
  } finally {
    external.close();
  }
}

/** Flips every sign bit of `bytes` in place: int8 q becomes uint8 q + 128 (and back again). */
function flipSignBits(bytes: Uint8Array): void {
  let i = 0;
  for (; i < bytes.length && (bytes.byteOffset + i) % 4 !== 0; i++) bytes[i] = bytes[i]! ^ 0x80;
  const words = (bytes.length - i) >>> 2;
  const view = new Int32Array(bytes.buffer, bytes.byteOffset + i, words);
  for (let w = 0; w < words; w++) view[w] = view[w]! ^ -0x7f7f7f80; // 0x80808080 as an int32
  for (i += words * 4; i < bytes.length; i++) bytes[i] = bytes[i]! ^ 0x80;
}

const asBytes = (values: Int8Array): Uint8Array => new Uint8Array(values.buffer, values.byteOffset, values.byteLength);

export class ExpertGraph {
  /**
   * Weights whose bytes `prepare` already sign-flipped in place (paged-in buffers): they run as they
   * are. Others are copied and flipped per run, when the CPU needs unsigned weights.
   */
  private readonly flipped = new WeakSet<Int8Array>();
  private scratch: { w13: Uint8Array; w2: Uint8Array } | null = null;

  private constructor(
    private readonly session: ort.InferenceSession,
    readonly dim: number,
    readonly ffn: number,
    /** Weights go to onnxruntime as uint8 with zero point 128 (see cpuHasExactInt8DotProduct). */
    readonly unsignedWeights: boolean,
  ) {}

  static async create(dim: number, ffn: number, options: ExpertGraphOptions = {}): Promise<ExpertGraph> {
    const dir = await mkdtemp(join(tmpdir(), 'sirocco-expert-graph-'));
    const unsignedWeights = options.unsignedWeights ?? !cpuHasExactInt8DotProduct();
    try {
      const path = join(dir, 'expert-ffn.onnx');
      buildExpertGraph(path, dim, ffn, unsignedWeights);
      const session = await createSession(path, { device: options.device ?? 'cpu', threads: options.threads ?? 2 });
      return new ExpertGraph(session, dim, ffn, unsignedWeights);
    } catch (error) {
      if (error instanceof SidecarError) throw error;
      throw modelError(
        `cannot create the expert FFN graph (dim ${dim}, ffn ${ffn}): ${error instanceof Error ? error.message : String(error)}`,
        error,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /**
   * Readies freshly paged-in weights for this graph, once per page-in: where the CPU needs unsigned
   * weights their bytes are sign-flipped in place, so every later run feeds them as they are. After
   * this the weights belong to the graph (their int8 views no longer hold q).
   */
  prepare(weights: Int8ExpertWeights): void {
    if (!this.unsignedWeights || this.flipped.has(weights.w13)) return;
    flipSignBits(asBytes(weights.w13));
    flipSignBits(asBytes(weights.w2));
    this.flipped.add(weights.w13);
  }

  /** Runs one expert on `rows` row vectors `x` ([rows, dim], row-major); returns [rows, dim]. */
  async run(x: Float32Array, rows: number, weights: Int8ExpertWeights): Promise<Float32Array> {
    const { dim, ffn } = this;
    if (x.length !== rows * dim) throw new RangeError(`expert input has ${x.length} values, expected ${rows}×${dim}`);
    const [w13, w2] = this.weightTensors(weights);
    const result = await this.session.run({
      x: new ort.Tensor('float32', x, [rows, dim]),
      w13,
      s13: new ort.Tensor('float32', weights.s13, [2 * ffn]),
      w2,
      s2: new ort.Tensor('float32', weights.s2, [dim]),
    });
    const y = result.y;
    if (!y) throw modelError('the expert FFN graph returned no output');
    return y.data as Float32Array;
  }

  private weightTensors(weights: Int8ExpertWeights): [ort.Tensor, ort.Tensor] {
    const { dim, ffn } = this;
    if (!this.unsignedWeights) return [new ort.Tensor('int8', weights.w13, [dim, 2 * ffn]), new ort.Tensor('int8', weights.w2, [ffn, dim])];
    if (this.flipped.has(weights.w13)) {
      return [new ort.Tensor('uint8', asBytes(weights.w13), [dim, 2 * ffn]), new ort.Tensor('uint8', asBytes(weights.w2), [ffn, dim])];
    }
    this.scratch ??= { w13: new Uint8Array(dim * 2 * ffn), w2: new Uint8Array(ffn * dim) };
    const { w13, w2 } = this.scratch;
    w13.set(asBytes(weights.w13));
    w2.set(asBytes(weights.w2));
    flipSignBits(w13);
    flipSignBits(w2);
    return [new ort.Tensor('uint8', w13, [dim, 2 * ffn]), new ort.Tensor('uint8', w2, [ffn, dim])];
  }

  async dispose(): Promise<void> {
    await this.session.release();
  }
}

export interface PagedExpertsOptions {
  /** `--expert-cache-mb`: MiB (2^20 bytes) of expert weights kept in memory; may be fractional. */
  budgetMb: number;
  policy?: EvictionPolicy;
  threads?: number;
  device?: Device;
  /** Guess the next layer's experts from the current hidden state and page them in early (default on). */
  prefetch?: boolean;
  onPageIn?: (seconds: number) => void;
}

export class PagedExperts implements ExpertProvider {
  /** Leases started ahead of `get` (the next expert of the current layer), by expert id. */
  private ahead = new Map<number, Promise<ExpertLease>>();
  private layerPlan: { layer: number; experts: number[] } = { layer: -1, experts: [] };

  private constructor(
    readonly store: ExpertStore,
    readonly cache: ExpertCache,
    /** int8 stores: the shared DynamicQuantizeMatMul graph; int4 stores: the kernel (its buffers hold the cache). */
    private readonly runner: { bits: 8; graph: ExpertGraph } | { bits: 4; kernel: Int4ExpertKernel },
    private readonly predictor: RouterPredictor | null,
  ) {}

  /**
   * Opens the store's paged experts (expert-store.ts). A budget below one layer's top-k experts is refused here,
   * before anything runs, with a message giving the minimum.
   */
  static async open(storeDir: string, options: PagedExpertsOptions): Promise<PagedExperts> {
    const store = await ExpertStore.open(storeDir);
    const { dim, ffn, experts, topK, normEps } = store.index;
    const budgetBytes = options.budgetMb * 1024 * 1024;
    const runner =
      store.bits === 4
        ? {
            bits: 4 as const,
            // Buffers: the budget's experts plus the loads that may be in flight beyond it (one layer's top-k).
            kernel: new Int4ExpertKernel({
              dim,
              ffn,
              bufferBytes: store.expertBytes,
              expectedBuffers: ExpertCache.slotsFor(store, budgetBytes) + topK,
              threads: options.threads ?? 2,
            }),
          }
        : { bits: 8 as const, graph: await ExpertGraph.create(dim, ffn, { threads: options.threads, device: options.device }) };
    const cache = new ExpertCache(store, {
      budgetBytes,
      policy: options.policy,
      onPageIn: options.onPageIn,
      ...(runner.bits === 4
        ? { buffers: runner.kernel }
        : {
            prepare: (weights) => {
              if (weights.bits === 8) runner.graph.prepare(weights);
            },
          }),
    });
    const predictor = options.prefetch === false ? null : new RouterPredictor(await store.readRouters(), dim, experts, topK, normEps);
    return new PagedExperts(store, cache, runner, predictor);
  }

  get index(): ExpertStoreIndex {
    return this.store.index;
  }

  stats(): ExpertCacheStats {
    return this.cache.stats();
  }

  /**
   * The runtime announces a layer before its experts run: `experts` = the routed ids (any order,
   * repeats allowed), `hidden` = this layer's post-attention hidden state [rows, dim]. The first
   * expert starts paging in now, and layer+1's likely experts are prefetched from `hidden`.
   */
  beginLayer(layer: number, experts: ArrayLike<number>, hidden?: { data: Float32Array; rows: number }): void {
    this.dropAhead();
    const planned = [...new Set(Array.from(experts))].sort((a, b) => a - b);
    this.layerPlan = { layer, experts: planned };
    this.cache.noteLayerStep(layer);
    if (planned.length > 0) this.startAhead(layer, planned[0]!);
    if (hidden && this.predictor && layer + 1 < this.index.layers) {
      this.cache.prefetch(layer + 1, this.predictor.predict(layer + 1, hidden.data, hidden.rows));
    }
  }

  /**
   * Expert (layer, expert) as a runnable FFN. Its page-in (if needed) is awaited inside `run`,
   * and the next planned expert of the layer starts paging in meanwhile (one ahead). A failed
   * page-in rejects `run` with the store's error naming the file.
   */
  async get(layer: number, expert: number): Promise<Expert> {
    const lease = this.ahead.get(expert) ?? this.cache.acquire(layer, expert);
    this.ahead.delete(expert);
    if (this.layerPlan.layer === layer) {
      const next = this.layerPlan.experts.find((e) => e > expert);
      if (next !== undefined && !this.ahead.has(next)) this.startAhead(layer, next);
    }
    lease.catch(() => undefined); // observed in run(); never an unhandled rejection
    return {
      // The int4 kernel quantises and sums each row on its own: no padding rows needed.
      rowMultiple: this.runner.bits === 4 ? 1 : undefined,
      run: async (x, rows) => {
        const waitStarted = performance.now();
        const pinned = await lease;
        this.cache.recordStall((performance.now() - waitStarted) / 1000);
        try {
          return await this.runWeights(x, rows, pinned.weights);
        } finally {
          pinned.release();
        }
      },
    };
  }

  /** Runs an expert with the store's kernel: int8 through the shared graph, int4 through ours. */
  private async runWeights(x: Float32Array, rows: number, weights: ExpertWeights): Promise<Float32Array> {
    const { runner } = this;
    if (weights.bits === 8 && runner.bits === 8) return runner.graph.run(x, rows, weights);
    if (weights.bits === 4 && runner.bits === 4) return runner.kernel.run(x, rows, weights);
    throw new Error(`an int${weights.bits} expert in a store opened for int${runner.bits}`);
  }

  private startAhead(layer: number, expert: number): void {
    const lease = this.cache.acquire(layer, expert);
    lease.catch(() => undefined);
    this.ahead.set(expert, lease);
  }

  /** Unpins leases started ahead but never used (a previous step failed part-way). */
  private dropAhead(): void {
    for (const lease of this.ahead.values())
      lease.then(
        (l) => l.release(),
        () => undefined,
      );
    this.ahead.clear();
  }

  async dispose(): Promise<void> {
    this.dropAhead();
    await this.cache.idle();
    this.cache.clear();
    if (this.runner.bits === 8) await this.runner.graph.dispose();
    else await this.runner.kernel.dispose();
  }
}
