/**
 * A byte-budgeted cache of paged experts: load on miss (one async read into a recycled buffer),
 * deduplicated concurrent loads, pinning while an expert runs, pluggable eviction, and
 * speculative prefetch. Resident bytes never exceed the budget except by loads in flight and by
 * experts pinned by the step that is running them.
 *
 * Policies (measured in bench/moe.ts, see docs/expert-paging.md):
 *   lru             evict the least recently used expert (the classic baseline). When layers
 *                   cycle through more favoured experts than fit, it evicts each one just before
 *                   its next use (measured on the full 8x7B shape: 4% hits against lfu's 74%).
 *   lfu             (default) evict the expert routed least often (ties: least recent): the
 *                   simplest rule that avoids LRU's collapse, no worse anywhere measured. Counts
 *                   are aged (AGEING_ROUTINGS_PER_EXPERT), so a routing that moves on is followed.
 *   layer-distance  router-statistics-aware Belady estimate: layers run in a fixed cycle, so an
 *                   expert's next use is expected `distance to its layer + L·(1/p − 1)` layers
 *                   away, p = how often the router picked it; evict the furthest (as good as lfu
 *                   in every measurement).
 */
import { invalidRequest, modelError } from '../../errors.ts';
import type { ExpertStore, ExpertWeights, RouterWeights } from './expert-store.ts';

export type EvictionPolicy = 'lru' | 'lfu' | 'layer-distance';
export const EVICTION_POLICIES: readonly EvictionPolicy[] = ['lru', 'lfu', 'layer-distance'];
export const DEFAULT_EVICTION_POLICY: EvictionPolicy = 'lfu';

/** Where page-in buffers (one expert file image each) come from and go back to. */
export interface ExpertBufferPool {
  allocate(): Uint8Array;
  /** A buffer the cache no longer keeps. */
  release(buffer: Uint8Array): void;
}

export interface ExpertCacheOptions {
  budgetBytes: number;
  /** Default: plain `store.allocate()` buffers left to the garbage collector. */
  buffers?: ExpertBufferPool;
  policy?: EvictionPolicy;
  /** Called with each page-in's latency (e.g. the sidecar's prom-client histogram). */
  onPageIn?: (seconds: number) => void;
}

/** Upper bounds (ms) of the page-in latency histogram; the last bucket is open. */
export const PAGE_IN_BUCKETS_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];

/** The counters the sidecar's /metrics exports; totals since start. */
export interface ExpertCacheCounters {
  hits: number;
  misses: number;
  prefetchHits: number;
  prefetchWasted: number;
  bytesPagedIn: number;
  residentBytes: number;
  budgetBytes: number;
}

/** The /metrics counters plus what the benchmark reports. */
export interface ExpertCacheStats extends ExpertCacheCounters {
  policy: EvictionPolicy;
  expertBytes: number;
  inflightBytes: number;
  /** Highest resident + in-flight bytes seen. */
  peakBytes: number;
  prefetchIssued: number;
  /** Predicted experts (from the next layer's router) that the real router then picked. */
  predictionsUsed: number;
  predictionsMade: number;
  pageIns: number;
  /** Time `acquire` callers spent waiting for experts that were not resident yet. */
  stallSecondsTotal: number;
  pageInSecondsTotal: number;
  pageInSecondsMax: number;
  /** Counts per PAGE_IN_BUCKETS_MS bucket, plus one overflow bucket. */
  pageInHistogram: number[];
}

/** A pinned expert: its weights stay valid until `release()`. */
export interface ExpertLease {
  readonly layer: number;
  readonly expert: number;
  readonly weights: ExpertWeights;
  release(): void;
}

interface Entry {
  key: number;
  layer: number;
  expert: number;
  buffer: Uint8Array;
  weights: ExpertWeights | null;
  loading: Promise<ExpertWeights>;
  pins: number;
  /** Loaded by a prefetch and not used yet. */
  prefetched: boolean;
  lastUse: number;
}

/**
 * Each time the experts have been routed this many times apiece on average, the routing counts (and
 * the layers' step counts beside them) are halved: an expert favoured long ago then loses its
 * place to today's favourites within a few periods, where with plain counts it would hold it until
 * they had been routed as often in all. Halving every count keeps their order, so under a steady
 * routing the choices are unchanged.
 */
export const AGEING_ROUTINGS_PER_EXPERT = 32;

export class ExpertCache {
  readonly policy: EvictionPolicy;
  readonly budgetBytes: number;
  /** Whole experts that fit in the budget. */
  readonly slots: number;
  private readonly entries = new Map<number, Entry>();
  private readonly freeBuffers: Uint8Array[] = [];
  private readonly routedCount: Float64Array;
  private readonly layerSteps: Float64Array;
  private routingsSinceAgeing = 0;
  private readonly predictions = new Map<number, Set<number>>();
  private clock = 0;
  private currentLayer = 0;
  private counters = {
    hits: 0,
    misses: 0,
    prefetchHits: 0,
    prefetchWasted: 0,
    prefetchIssued: 0,
    bytesPagedIn: 0,
    predictionsUsed: 0,
    predictionsMade: 0,
    pageIns: 0,
    stallSecondsTotal: 0,
    pageInSecondsTotal: 0,
    pageInSecondsMax: 0,
    peakBytes: 0,
  };
  private readonly histogram = new Array<number>(PAGE_IN_BUCKETS_MS.length + 1).fill(0);

  constructor(
    private readonly store: ExpertStore,
    private readonly options: ExpertCacheOptions,
  ) {
    const { topK, layers, experts } = store.index;
    const expertBytes = store.expertBytes;
    const minimum = topK * expertBytes;
    if (!(options.budgetBytes >= minimum)) {
      throw invalidRequest(
        `--expert-cache-mb ${formatMb(options.budgetBytes)} is smaller than one layer's top-${topK} experts ` +
          `(${topK} × ${formatMb(expertBytes)} MiB); use at least ${formatMb(minimum, 'up')}`,
        'expert_cache_mb',
      );
    }
    this.policy = options.policy ?? DEFAULT_EVICTION_POLICY;
    this.budgetBytes = options.budgetBytes;
    this.slots = ExpertCache.slotsFor(store, options.budgetBytes);
    this.routedCount = new Float64Array(layers * experts);
    this.layerSteps = new Float64Array(layers);
  }

  /** Whole experts a budget holds (at most all of them). */
  static slotsFor(store: ExpertStore, budgetBytes: number): number {
    const { layers, experts } = store.index;
    // The epsilon absorbs MiB ↔ bytes round-off (a budget of exactly N experts must hold N).
    return Math.min(layers * experts, Math.floor(budgetBytes / store.expertBytes + 1e-9));
  }

  /**
   * Pins expert (layer, expert), paging it in on a miss. Concurrent calls for the same expert
   * share one read. A missing or corrupt file rejects with the store's modelError and leaves the
   * cache usable for other experts.
   */
  async acquire(layer: number, expert: number): Promise<ExpertLease> {
    const entry = this.noteUse(layer, expert) ?? this.startLoad(layer, expert, false);
    entry.pins += 1;
    entry.lastUse = ++this.clock;
    let weights: ExpertWeights;
    try {
      weights = entry.weights ?? (await entry.loading);
    } catch (error) {
      entry.pins -= 1;
      throw error;
    }
    return this.lease(entry, weights);
  }

  /** Whether expert (layer, expert) is in memory now (paged in, not still loading). */
  isResident(layer: number, expert: number): boolean {
    return this.entries.get(this.keyOf(layer, expert))?.weights != null;
  }

  /**
   * `acquire` for an expert that `isResident`, without waiting: the same bookkeeping, the lease at
   * once. Throws if it is not resident.
   */
  acquireResident(layer: number, expert: number): ExpertLease {
    const entry = this.entries.get(this.keyOf(layer, expert));
    if (!entry?.weights) throw new RangeError(`expert (layer ${layer}, expert ${expert}) is not resident`);
    this.noteUse(layer, expert);
    entry.pins += 1;
    entry.lastUse = ++this.clock;
    return this.lease(entry, entry.weights);
  }

  /** Counts a routing of (layer, expert) (frequencies, predictions, hits or misses); returns its entry, if any. */
  private noteUse(layer: number, expert: number): Entry | undefined {
    const key = this.keyOf(layer, expert);
    this.currentLayer = layer;
    this.routedCount[key]! += 1;
    if (++this.routingsSinceAgeing >= AGEING_ROUTINGS_PER_EXPERT * this.routedCount.length) this.ageCounts();
    const predicted = this.predictions.get(layer);
    if (predicted?.delete(expert)) this.counters.predictionsUsed += 1;
    const entry = this.entries.get(key);
    if (entry?.weights) this.counters.hits += 1;
    else this.counters.misses += 1;
    if (entry?.prefetched) {
      this.counters.prefetchHits += 1;
      entry.prefetched = false;
    }
    return entry;
  }

  /** A lease on a pinned entry's weights: `release` unpins it once. */
  private lease(pinned: Entry, weights: ExpertWeights): ExpertLease {
    let released = false;
    return {
      layer: pinned.layer,
      expert: pinned.expert,
      weights,
      release: () => {
        if (released) return;
        released = true;
        pinned.pins -= 1;
        this.enforceBudget();
      },
    };
  }

  /** Adds time a running step spent blocked on a page-in (measured by the caller that waited). */
  recordStall(seconds: number): void {
    this.counters.stallSecondsTotal += seconds;
  }

  /** Records that `layer` ran once more (router statistics for the layer-distance policy). */
  noteLayerStep(layer: number): void {
    this.layerSteps[layer]! += 1;
  }

  /**
   * Starts loading `experts` of `layer` (guessed from the next layer's router) into free slots;
   * never evicts, never waits, never throws. A guess displaces nothing: measured on bench:moe at
   * half the experts' bytes, prefetches that evicted (even only the layers just run) made decode
   * 30% slower than none — at ~67% accuracy they threw out experts the next token needed, and
   * their reads doubled the demand page-ins' latency on the same disk. So prefetch fills the cache
   * while it has room (a cold start, or a budget that holds every expert) and then stops.
   */
  prefetch(layer: number, experts: readonly number[]): void {
    this.predictions.set(layer, new Set(experts));
    this.counters.predictionsMade += experts.length;
    for (const expert of experts) {
      const key = this.keyOf(layer, expert);
      if (this.entries.has(key)) continue;
      if (this.entries.size + 1 > this.slots) return;
      const entry = this.startLoad(layer, expert, true);
      entry.lastUse = ++this.clock;
      this.counters.prefetchIssued += 1;
      // A failed prefetch is dropped quietly; the demand load that follows reports the error.
      entry.loading.catch(() => undefined);
    }
  }

  stats(): ExpertCacheStats {
    const expertBytes = this.store.expertBytes;
    let resident = 0;
    let inflight = 0;
    for (const entry of this.entries.values()) entry.weights ? resident++ : inflight++;
    return {
      ...this.counters,
      policy: this.policy,
      expertBytes,
      residentBytes: resident * expertBytes,
      inflightBytes: inflight * expertBytes,
      budgetBytes: this.budgetBytes,
      pageInHistogram: [...this.histogram],
    };
  }

  /** Resolves when no page-in is in flight (prefetches included). */
  async idle(): Promise<void> {
    while ([...this.entries.values()].some((entry) => !entry.weights)) {
      await Promise.allSettled([...this.entries.values()].map((entry) => entry.loading));
    }
  }

  /** Drops every unpinned expert (tests, model unload). */
  clear(): void {
    for (const entry of [...this.entries.values()]) if (entry.pins === 0 && entry.weights) this.evict(entry);
    for (const buffer of this.freeBuffers.splice(0)) this.options.buffers?.release(buffer);
  }

  private ageCounts(): void {
    for (let key = 0; key < this.routedCount.length; key++) this.routedCount[key]! /= 2;
    for (let layer = 0; layer < this.layerSteps.length; layer++) this.layerSteps[layer]! /= 2;
    this.routingsSinceAgeing = 0;
  }

  private keyOf(layer: number, expert: number): number {
    const { layers, experts } = this.store.index;
    if (!Number.isInteger(layer) || layer < 0 || layer >= layers || !Number.isInteger(expert) || expert < 0 || expert >= experts) {
      throw new RangeError(`expert (layer ${layer}, expert ${expert}) is outside ${layers} layers × ${experts} experts`);
    }
    return layer * experts + expert;
  }

  private startLoad(layer: number, expert: number, prefetched: boolean): Entry {
    const key = this.keyOf(layer, expert);
    if (!prefetched) this.makeRoom(key);
    const buffer = this.freeBuffers.pop() ?? this.options.buffers?.allocate() ?? this.store.allocate();
    const started = performance.now();
    const entry: Entry = {
      key,
      layer,
      expert,
      buffer,
      weights: null,
      loading: Promise.resolve(null as never),
      pins: 0,
      prefetched,
      lastUse: 0,
    };
    entry.loading = this.store.read(layer, expert, buffer).then(
      (weights) => {
        entry.weights = weights;
        this.recordPageIn((performance.now() - started) / 1000);
        this.enforceBudget();
        return weights;
      },
      (error: unknown) => {
        this.entries.delete(key);
        this.recycle(buffer);
        throw error;
      },
    );
    this.entries.set(key, entry);
    this.counters.peakBytes = Math.max(this.counters.peakBytes, this.entries.size * this.store.expertBytes);
    return entry;
  }

  private recordPageIn(seconds: number): void {
    const c = this.counters;
    c.pageIns += 1;
    c.bytesPagedIn += this.store.expertBytes;
    c.pageInSecondsTotal += seconds;
    c.pageInSecondsMax = Math.max(c.pageInSecondsMax, seconds);
    const ms = seconds * 1000;
    const bucket = PAGE_IN_BUCKETS_MS.findIndex((bound) => ms <= bound);
    this.histogram[bucket === -1 ? PAGE_IN_BUCKETS_MS.length : bucket]! += 1;
    this.options.onPageIn?.(seconds);
  }

  /** Evicts until one more expert fits in the budget; false when only pinned/loading ones remain. */
  private makeRoom(incoming: number): boolean {
    while (this.entries.size + 1 > this.slots) {
      const victim = this.pickVictim(incoming);
      if (!victim) return false;
      this.evict(victim);
    }
    return true;
  }

  /** After a load lands or a pin is released: shed unpinned experts above the budget. */
  private enforceBudget(): void {
    while (this.entries.size > this.slots) {
      const victim = this.pickVictim(-1);
      if (!victim) return;
      this.evict(victim);
    }
  }

  private evict(entry: Entry): void {
    this.entries.delete(entry.key);
    if (entry.prefetched) this.counters.prefetchWasted += 1;
    this.recycle(entry.buffer);
  }

  /** Keeps a freed buffer for the next page-in while the cache is below its budget. */
  private recycle(buffer: Uint8Array): void {
    if (this.entries.size + this.freeBuffers.length < this.slots) this.freeBuffers.push(buffer);
    else this.options.buffers?.release(buffer);
  }

  /** Layers until `layer` runs again, counting from the one running now (itself ⇒ a full cycle). */
  private layersUntilUse(layer: number): number {
    const { layers } = this.store.index;
    return ((layer - this.currentLayer - 1 + layers) % layers) + 1;
  }

  private pickVictim(incoming: number): Entry | null {
    let best: Entry | null = null;
    let bestScore = -Infinity;
    for (const entry of this.entries.values()) {
      if (entry.pins > 0 || !entry.weights || entry.key === incoming) continue;
      const score = this.evictionScore(entry);
      if (score > bestScore) {
        best = entry;
        bestScore = score;
      }
    }
    return best;
  }

  /** Higher = better to evict. */
  private evictionScore(entry: Entry): number {
    switch (this.policy) {
      case 'lru':
        return -entry.lastUse;
      case 'lfu':
        return -this.routedCount[entry.key]! * 1e9 - entry.lastUse;
      case 'layer-distance': {
        const { layers } = this.store.index;
        const distance = this.layersUntilUse(entry.layer);
        const steps = Math.max(this.layerSteps[entry.layer]!, 1);
        const p = (this.routedCount[entry.key]! + 1) / (steps + 2);
        return distance + layers * (1 / Math.min(p, 1) - 1) - entry.lastUse * 1e-12;
      }
    }
  }
}

/** MiB with 4 decimals; rounded up where the number is a minimum the user must reach. */
function formatMb(bytes: number, round: 'nearest' | 'up' = 'nearest'): string {
  const scaled = (bytes / (1024 * 1024)) * 10_000;
  return ((round === 'up' ? Math.ceil(scaled) : Math.round(scaled)) / 10_000).toFixed(4);
}

/**
 * Guesses a layer's experts before its router runs (Eliseev & Mazur 2023): the next layer's FFN
 * norm and router applied to the current hidden state. Cheap in JS (dim × experts per row).
 */
export class RouterPredictor {
  constructor(
    private readonly routers: RouterWeights,
    private readonly dim: number,
    private readonly experts: number,
    private readonly topK: number,
    private readonly normEps: number,
  ) {
    routers.norm.forEach((norm, layer) => {
      if (norm.length !== dim || routers.gate[layer]?.length !== experts * dim) {
        throw modelError(`expert store routers for layer ${layer} do not match dim ${dim} × ${experts} experts`);
      }
    });
  }

  /** The union over `rows` rows of `hidden` ([rows, dim]) of the top-k experts of `layer`. */
  predict(layer: number, hidden: Float32Array, rows: number): number[] {
    const norm = this.routers.norm[layer]!;
    const gate = this.routers.gate[layer]!;
    const { dim, experts, topK } = this;
    const chosen = new Set<number>();
    const logits = new Float64Array(experts);
    for (let r = 0; r < rows; r++) {
      const base = r * dim;
      let sumSquares = 0;
      for (let k = 0; k < dim; k++) sumSquares += hidden[base + k]! * hidden[base + k]!;
      const inverseRms = 1 / Math.sqrt(sumSquares / dim + this.normEps);
      for (let e = 0; e < experts; e++) {
        let dot = 0;
        const row = e * dim;
        for (let k = 0; k < dim; k++) dot += gate[row + k]! * norm[k]! * hidden[base + k]!;
        logits[e] = dot * inverseRms;
      }
      for (const e of topIndices(logits, topK)) chosen.add(e);
    }
    return [...chosen];
  }
}

/** Indices of the k largest values, largest first. */
export function topIndices(values: ArrayLike<number>, k: number): number[] {
  return Array.from({ length: values.length }, (_, i) => i)
    .sort((a, b) => values[b]! - values[a]! || a - b)
    .slice(0, k);
}
