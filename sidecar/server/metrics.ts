/**
 * The sidecar's Prometheus metrics (prom-client, one registry per server so tests can run several):
 * requests by route and status, time to first token and inter-token latency, tokens in and out,
 * queue depth, active sequences and batch size per model, the KV memory each model reserved, and
 * expert-cache statistics for MoE models whose engine reports them. Gauges read live state at scrape
 * time.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { ExpertCacheCounters, KvReserveStats } from '../engine/index.ts';
import type { SchedulerObserver, SchedulerStats } from '../serving/scheduler.ts';

export interface SidecarMetrics {
  readonly registry: Registry;
  /** Counts one finished HTTP request. */
  countRequest(route: string, status: number): void;
  /** Scheduler hooks feeding the latency, token and batch metrics of `model`. */
  observerFor(model: string): SchedulerObserver;
  /** Queue depth and active sequences of `model`, read at scrape time. */
  watchScheduler(model: string, stats: () => SchedulerStats): void;
  /** Expert-cache statistics of `model`, read at scrape time (null when it has no cache). */
  watchExpertCache(model: string, stats: () => ExpertCacheCounters | null): void;
  /** The KV memory a model reserved at load and how much of it its caches hold now. */
  watchKvReserve(model: string, stats: () => KvReserveStats): void;
  /** Page-in latency of one expert load, for engines that time them. */
  observeExpertPageIn(model: string, seconds: number): void;
  render(): Promise<string>;
  readonly contentType: string;
}

// Latency buckets sized for CPU decode: milliseconds for small models up to seconds for 7B-class.
const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
// Finer for inter-token latency: percentiles read from it should be good to about 20 %.
const INTER_TOKEN_BUCKETS = [
  0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1, 1.5, 2, 3, 5,
  10,
];

export function createSidecarMetrics({ defaultMetrics = true }: { defaultMetrics?: boolean } = {}): SidecarMetrics {
  const registry = new Registry();
  if (defaultMetrics) collectDefaultMetrics({ register: registry, prefix: 'sirocco_' });
  const registers = [registry];

  const requests = new Counter({
    name: 'sirocco_requests_total',
    help: 'HTTP requests by route and status code',
    labelNames: ['route', 'status'] as const,
    registers,
  });
  const timeToFirstToken = new Histogram({
    name: 'sirocco_time_to_first_token_seconds',
    help: 'Time from admission to the first generated token',
    labelNames: ['model'] as const,
    buckets: LATENCY_BUCKETS,
    registers,
  });
  const interTokenLatency = new Histogram({
    name: 'sirocco_inter_token_latency_seconds',
    help: 'Time between consecutive generated tokens of one request',
    labelNames: ['model'] as const,
    buckets: INTER_TOKEN_BUCKETS,
    registers,
  });
  const promptTokens = new Counter({
    name: 'sirocco_prompt_tokens_total',
    help: 'Prompt tokens of finished requests',
    labelNames: ['model'] as const,
    registers,
  });
  const completionTokens = new Counter({
    name: 'sirocco_completion_tokens_total',
    help: 'Generated tokens of finished requests',
    labelNames: ['model'] as const,
    registers,
  });
  const finishedRequests = new Counter({
    name: 'sirocco_generations_total',
    help: 'Finished generations by finish reason (stop, length, cancelled, error)',
    labelNames: ['model', 'reason'] as const,
    registers,
  });
  const batchSize = new Histogram({
    name: 'sirocco_batch_size',
    help: 'Sequences per forward step, by kind (decode: one new token each; prefill: prompt chunks)',
    labelNames: ['model', 'kind'] as const,
    buckets: [1, 2, 4, 8, 16, 32, 64],
    registers,
  });
  const stepSeconds = new Histogram({
    name: 'sirocco_step_seconds',
    help: 'Duration of one batched forward step, by kind (decode or prefill)',
    labelNames: ['model', 'kind'] as const,
    buckets: LATENCY_BUCKETS,
    registers,
  });

  const schedulers = perModelGauges<SchedulerStats>(registers);
  schedulers.gauge('sirocco_queue_depth', 'Requests waiting for a batch slot', (stats) => stats.queueDepth);
  schedulers.gauge('sirocco_active_sequences', 'Sequences currently in the batch', (stats) => stats.activeSequences);
  schedulers.gauge('sirocco_tokens_per_second', 'Generated tokens per second over the last seconds', (stats) => stats.tokensPerSecond);

  const expertCaches = perModelGauges<ExpertCacheCounters>(registers);
  // Totals since start are exported as gauges because the engine owns the counting.
  expertCaches.gauge('sirocco_expert_cache_hits', 'Expert lookups served from memory', (stats) => stats.hits);
  expertCaches.gauge('sirocco_expert_cache_misses', 'Expert lookups that paged in from disk', (stats) => stats.misses);
  expertCaches.gauge('sirocco_expert_cache_prefetch_hits', 'Prefetched experts that were then used', (stats) => stats.prefetchHits);
  expertCaches.gauge('sirocco_expert_cache_prefetch_wasted', 'Prefetched experts evicted unused', (stats) => stats.prefetchWasted);
  expertCaches.gauge('sirocco_expert_cache_paged_in_bytes', 'Bytes of expert weights paged in', (stats) => stats.bytesPagedIn);
  expertCaches.gauge('sirocco_expert_cache_resident_bytes', 'Bytes of expert weights resident now', (stats) => stats.residentBytes);
  expertCaches.gauge('sirocco_expert_cache_budget_bytes', 'Expert cache budget', (stats) => stats.budgetBytes);

  const kvReserves = perModelGauges<KvReserveStats>(registers);
  kvReserves.gauge('sirocco_kv_reserved_bytes', 'KV cache memory reserved at load', (stats) => stats.bytes);
  kvReserves.gauge('sirocco_kv_reserved_in_use_bytes', 'Reserved KV cache memory the caches hold now', (stats) => stats.inUse);
  const expertPageIn = new Histogram({
    name: 'sirocco_expert_page_in_seconds',
    help: 'Latency of paging one expert in',
    labelNames: ['model'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
    registers,
  });

  return {
    registry,
    contentType: registry.contentType,
    countRequest: (route, status) => requests.inc({ route, status: String(status) }),
    observerFor(model) {
      return {
        step({ batchSize: size, prefillTokens, seconds }) {
          const kind = prefillTokens > 0 ? 'prefill' : 'decode';
          batchSize.observe({ model, kind }, size);
          stepSeconds.observe({ model, kind }, seconds);
        },
        firstToken: (seconds) => timeToFirstToken.observe({ model }, seconds),
        interToken: (seconds) => interTokenLatency.observe({ model }, seconds),
        finished({ promptTokens: prompt, completionTokens: completion, finishReason }) {
          promptTokens.inc({ model }, prompt);
          completionTokens.inc({ model }, completion);
          finishedRequests.inc({ model, reason: finishReason });
        },
      };
    },
    watchScheduler: (model, stats) => void schedulers.sources.set(model, stats),
    watchExpertCache: (model, stats) => void expertCaches.sources.set(model, stats),
    watchKvReserve: (model, stats) => void kvReserves.sources.set(model, stats),
    observeExpertPageIn: (model, seconds) => expertPageIn.observe({ model }, seconds),
    render: () => registry.metrics(),
  };
}

/** Gauges read at scrape time from one stats source per model; a source returning null reports nothing. */
function perModelGauges<Stats>(registers: Registry[]) {
  const sources = new Map<string, () => Stats | null>();
  const gauge = (name: string, help: string, read: (stats: Stats) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ['model'] as const,
      registers,
      collect() {
        for (const [model, source] of sources) {
          const stats = source();
          if (stats) this.set({ model }, read(stats));
        }
      },
    });
  return { sources, gauge };
}
