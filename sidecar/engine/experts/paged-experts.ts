/**
 * Mixtral experts from the store's block files (expert-store.ts) through a budgeted cache
 * (expert-cache.ts) into one kernel (block-kernel.ts). A page-in is a plain read of bytes into one
 * of the kernel's buffers — no session per expert — and every expert runs through the same kernel
 * whatever is resident, which is what makes the output bit-identical across cache budgets,
 * including "every expert resident" (`PagedExperts.resident`). `PagedExperts` is what the Mixtral
 * runtime calls per layer: store + cache + kernel + next-layer prefetch.
 */
import { modelError, SidecarError } from '../../errors.ts';
import type { Device } from '../device.ts';
import { autoExpertCacheBytes } from '../memory-budget.ts';
import type { Expert, ExpertJob, ExpertProvider } from '../moe.ts';
import { BlockExpertKernel, type KernelVariant, TOGETHER_MAX_ROWS } from './block-kernel.ts';
import { type EvictionPolicy, ExpertCache, type ExpertCacheStats, type ExpertLease, RouterPredictor } from './expert-cache.ts';
import { ExpertStore, type ExpertStoreIndex } from './expert-store.ts';

export interface PagedExpertsOptions {
  /**
   * `--expert-cache-mb`: MiB (2^20 bytes) of expert weights kept in memory; may be fractional.
   * 'all': every expert, read once at open (resident experts: same bytes, same kernel, same logits).
   * 'auto': sized from available memory (memory-budget.ts); 'all' where every expert fits.
   */
  budgetMb: number | 'all' | 'auto';
  policy?: EvictionPolicy;
  threads?: number;
  device?: Device;
  /** The kernel's variant (default: the fastest exact one this engine has). */
  kernelVariant?: KernelVariant;
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
    /** Runs every expert; its buffers hold the cache. */
    readonly kernel: BlockExpertKernel,
    private readonly predictor: RouterPredictor | null,
    /** How the budget was chosen, for the operator's log. */
    readonly budgetReason: string,
  ) {}

  /** The budget in bytes, whether it holds every expert, and why. */
  private static budgetFor(
    store: ExpertStore,
    budgetMb: PagedExpertsOptions['budgetMb'],
  ): { bytes: number; resident: boolean; reason: string } {
    const { layers, experts } = store.index;
    const allBytes = layers * experts * store.expertBytes;
    const all = `all ${layers * experts} experts resident (${(allBytes / 2 ** 30).toFixed(2)} GiB)`;
    if (budgetMb === 'all') return { bytes: allBytes, resident: true, reason: all };
    if (budgetMb === 'auto') {
      const auto = autoExpertCacheBytes({ expertBytes: store.expertBytes, totalExperts: layers * experts, residentBytes: 0 });
      return auto.bytes >= allBytes
        ? { bytes: allBytes, resident: true, reason: `auto: ${auto.reason}` }
        : { bytes: auto.bytes, resident: false, reason: `auto: ${auto.reason}` };
    }
    return { bytes: budgetMb * 1024 * 1024, resident: false, reason: `--expert-cache-mb ${budgetMb}` };
  }

  /**
   * Opens the store's paged experts (expert-store.ts). A budget below one layer's top-k experts is refused here,
   * before anything runs, with a message giving the minimum.
   */
  static async open(storeDir: string, options: PagedExpertsOptions): Promise<PagedExperts> {
    const store = await ExpertStore.open(storeDir);
    const { dim, ffn, experts, topK, normEps } = store.index;
    const budget = PagedExperts.budgetFor(store, options.budgetMb);
    const { bytes: budgetBytes, resident } = budget;
    const kernel = await BlockExpertKernel.create({
      dim,
      ffn,
      bufferBytes: store.expertBytes,
      // The budget's experts plus the loads that may be in flight beyond it (one layer's top-k).
      expectedBuffers: ExpertCache.slotsFor(store, budgetBytes) + topK,
      threads: options.threads ?? 2,
      variant: options.kernelVariant,
    });
    let cache: ExpertCache;
    try {
      cache = new ExpertCache(store, { budgetBytes, policy: options.policy, onPageIn: options.onPageIn, buffers: kernel });
    } catch (error) {
      await kernel.dispose();
      if (options.budgetMb === 'auto' && error instanceof SidecarError) {
        throw modelError(`--expert-cache-mb auto found no room for one layer's top-${topK} experts: ${budget.reason}`, error);
      }
      throw error;
    }
    const predictor =
      resident || options.prefetch === false ? null : new RouterPredictor(await store.readRouters(), dim, experts, topK, normEps);
    const paged = new PagedExperts(store, cache, kernel, predictor, budget.reason);
    if (resident) {
      try {
        await paged.readAll();
      } catch (error) {
        await paged.dispose();
        throw error;
      }
    }
    return paged;
  }

  /** Pages every expert in, one at a time (a budget of all of them evicts none). */
  private async readAll(): Promise<void> {
    for (let layer = 0; layer < this.index.layers; layer++) {
      for (let expert = 0; expert < this.index.experts; expert++) (await this.cache.acquire(layer, expert)).release();
    }
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
    // Only a page-in is worth starting ahead: a resident expert is pinned when it runs.
    if (planned.length > 0 && !this.cache.isResident(layer, planned[0]!)) this.startAhead(layer, planned[0]!);
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
    return new LeasedExpert(this, lease);
  }

  /**
   * A layer's routed experts in one kernel call when every one is in memory now (always, with every
   * expert resident): no page-in to wait for, so no promise per expert. Null when any is not, or a
   * lease was started ahead (a page-in this step began).
   */
  runResident(layer: number, jobs: readonly ExpertJob[]): Float32Array[] | null {
    if (this.ahead.size > 0 || !jobs.every(({ expert }) => this.cache.isResident(layer, expert))) return null;
    const leases = jobs.map(({ expert }) => this.cache.acquireResident(layer, expert));
    try {
      return this.kernel.runMany(jobs.map(({ x, rows }, k) => ({ x, rows, weights: leases[k]!.weights })));
    } finally {
      for (const lease of leases) lease.release();
    }
  }

  /** Runs a leased expert once its page-in (if any) is done; a failed page-in rejects with the store's error. */
  async runLeased(lease: Promise<ExpertLease>, x: Float32Array, rows: number): Promise<Float32Array> {
    const [pinned] = await this.pin([lease]);
    try {
      return this.kernel.run(x, rows, pinned!.weights);
    } finally {
      pinned!.release();
    }
  }

  /** Two leased experts at once, one per kernel thread (BlockExpertKernel.runTogether). */
  async runLeasedTogether(
    leases: [Promise<ExpertLease>, Promise<ExpertLease>],
    first: { x: Float32Array; rows: number },
    second: { x: Float32Array; rows: number },
  ): Promise<[Float32Array, Float32Array]> {
    const [a, b] = await this.pin(leases);
    try {
      return this.kernel.runTogether({ ...first, weights: a!.weights }, { ...second, weights: b!.weights });
    } finally {
      a!.release();
      b!.release();
    }
  }

  /** Awaits every lease, counting the wait as a stall; on a failure, releases the ones that pinned. */
  private async pin(leases: Promise<ExpertLease>[]): Promise<ExpertLease[]> {
    const waitStarted = performance.now();
    const settled = await Promise.allSettled(leases);
    this.cache.recordStall((performance.now() - waitStarted) / 1000);
    const failed = settled.find((result) => result.status === 'rejected');
    if (failed) {
      for (const result of settled) if (result.status === 'fulfilled') result.value.release();
      throw failed.reason;
    }
    return settled.map((result) => (result as PromiseFulfilledResult<ExpertLease>).value);
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
    await this.kernel.dispose();
  }
}

/** An expert of `PagedExperts` under a lease: its page-in is awaited when it runs. */
class LeasedExpert implements Expert {
  // The kernel quantises and sums each row on its own: no padding rows needed.
  readonly rowMultiple = 1;
  /** Its page-in is done (set a microtask after the lease resolves). */
  private pagedIn = false;

  constructor(
    private readonly owner: PagedExperts,
    private readonly lease: Promise<ExpertLease>,
  ) {
    lease.then(
      () => {
        this.pagedIn = true;
      },
      () => undefined,
    );
  }

  run(x: Float32Array, rows: number): Promise<Float32Array> {
    return this.owner.runLeased(this.lease, x, rows);
  }

  /**
   * Together (one per kernel thread) when both are this store's, `other` is already in memory and
   * both fit one pass of the kernel; otherwise one after the other, so this one computes while
   * `other` still pages in.
   */
  async runWith(
    other: Expert,
    x: Float32Array,
    rows: number,
    otherX: Float32Array,
    otherRows: number,
  ): Promise<[Float32Array, Float32Array]> {
    if (other instanceof LeasedExpert && other.owner === this.owner && other.pagedIn && Math.max(rows, otherRows) <= TOGETHER_MAX_ROWS) {
      return this.owner.runLeasedTogether([this.lease, other.lease], { x, rows }, { x: otherX, rows: otherRows });
    }
    return [await this.run(x, rows), await other.run(otherX, otherRows)];
  }
}
