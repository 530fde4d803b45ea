import { describe, expect, it } from 'vitest';
import { createSidecarMetrics } from './metrics.ts';

describe('sidecar metrics', () => {
  it('exports request counts, latency histograms, token counters and batch sizes in Prometheus text format', async () => {
    const metrics = createSidecarMetrics({ defaultMetrics: false });
    metrics.countRequest('/v1/chat/completions', 200);
    metrics.countRequest('/v1/chat/completions', 503);
    const observer = metrics.observerFor('mistral-tiny');
    observer.step?.({ batchSize: 3, decodeEntries: 2, prefillTokens: 17, seconds: 0.02 });
    observer.firstToken?.(0.3);
    observer.interToken?.(0.04);
    observer.finished?.({ promptTokens: 12, completionTokens: 5, finishReason: 'stop' });

    const text = await metrics.render();
    expect(metrics.contentType).toContain('text/plain');
    expect(text).toContain('sirocco_requests_total{route="/v1/chat/completions",status="200"} 1');
    expect(text).toContain('sirocco_requests_total{route="/v1/chat/completions",status="503"} 1');
    expect(text).toContain('sirocco_time_to_first_token_seconds_count{model="mistral-tiny"} 1');
    expect(text).toContain('sirocco_inter_token_latency_seconds_sum{model="mistral-tiny"} 0.04');
    expect(text).toContain('sirocco_prompt_tokens_total{model="mistral-tiny"} 12');
    expect(text).toContain('sirocco_completion_tokens_total{model="mistral-tiny"} 5');
    expect(text).toContain('sirocco_generations_total{model="mistral-tiny",reason="stop"} 1');
    expect(text).toContain('sirocco_batch_size_bucket{le="4",model="mistral-tiny",kind="prefill"} 1');
    expect(text).toContain('sirocco_step_seconds_sum{model="mistral-tiny",kind="prefill"} 0.02');
  });

  it('reads queue depth, active sequences and expert-cache statistics live at scrape time', async () => {
    const metrics = createSidecarMetrics({ defaultMetrics: false });
    let queueDepth = 2;
    metrics.watchScheduler('mistral-small', () => ({ queueDepth, activeSequences: 4, tokensPerSecond: 12.5 }));
    metrics.watchExpertCache('mistral-small', () => ({
      hits: 90,
      misses: 10,
      prefetchHits: 7,
      prefetchWasted: 1,
      bytesPagedIn: 4096,
      residentBytes: 2048,
      budgetBytes: 8192,
    }));
    metrics.observeExpertPageIn('mistral-small', 0.003);
    metrics.watchKvReserve('mistral-small', () => ({ bytes: 16 * 2 ** 20, inUse: 4096 }));

    expect(await metrics.render()).toContain('sirocco_queue_depth{model="mistral-small"} 2');
    queueDepth = 5;
    const text = await metrics.render();
    expect(text).toContain('sirocco_queue_depth{model="mistral-small"} 5');
    expect(text).toContain('sirocco_active_sequences{model="mistral-small"} 4');
    expect(text).toContain('sirocco_tokens_per_second{model="mistral-small"} 12.5');
    expect(text).toContain('sirocco_expert_cache_hits{model="mistral-small"} 90');
    expect(text).toContain('sirocco_expert_cache_resident_bytes{model="mistral-small"} 2048');
    expect(text).toContain('sirocco_expert_page_in_seconds_count{model="mistral-small"} 1');
    expect(text).toContain('sirocco_kv_reserved_bytes{model="mistral-small"} 16777216');
    expect(text).toContain('sirocco_kv_reserved_in_use_bytes{model="mistral-small"} 4096');
  });

  it('keeps registries separate so several servers can live in one process', async () => {
    const first = createSidecarMetrics({ defaultMetrics: false });
    const second = createSidecarMetrics({ defaultMetrics: false });
    first.countRequest('/health', 200);
    expect(await second.render()).not.toContain('route="/health"');
  });
});
