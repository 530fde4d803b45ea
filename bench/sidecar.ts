/**
 * `npm run bench:sidecar`: continuous batching under load, end to end over HTTP.
 *
 * Model: the 1.0B-parameter Mistral bench shape (dim 2048, 16 layers, 16 heads / 4 KV heads,
 * FFN 7168, vocab 32000) with random weights at int4, generated once into
 * $SIROCCO_HOME/bench/mistral-1b-int4 (writeRandomCheckpoint + convertCheckpoint) and reused.
 *
 * Server: the real `sirocco serve` in its own process (--max-batch 16). Load: for 1, 4, 8 and 16
 * concurrent streams, that many clients start one streaming request each at the same moment, each
 * asking for --tokens tokens. The load generator is a pool of fetch-based SSE clients rather than
 * autocannon: autocannon measures whole HTTP responses (latency to the last byte, requests/s) and
 * cannot time the individual SSE events inside a stream, which is what time-to-first-token and
 * inter-token latency are.
 *
 * Reported per concurrency: aggregate decode tokens/s (tokens after each stream's first, over the
 * span from the first stream's first token to the last stream's last token), end-to-end tokens/s,
 * p50/p99 time to first token, inter-token latency both between SSE events at the client (an event
 * can carry more than one token when the detokenizer holds text back) and per token inside the
 * sidecar (its histogram), the speed-up over one stream, and (from
 * the sidecar's /metrics) the decode steps of the level with their mean batch size and duration,
 * which separate the engine's batch scaling from the scheduler's overhead, and for scale the
 * prefill rate of one long prompt (many rows through the weights at once). Targets: ≥ 4× the
 * single-stream throughput at 8 streams; p99 inter-token latency under 2× the single-stream p99.
 *
 *   --tokens N        tokens per stream (default 64)
 *   --levels 1,4,8,16 concurrency levels
 *   --threads N       onnxruntime threads in the sidecar (default 2)
 *   --out FILE        JSON results (default bench/results/sidecar.json)
 *
 * With LLAMA_ANCHOR_DIR set (bench/anchor.ts), the single-stream decode and the prefill are set against llama.cpp's
 * figures for the same 1.0B shape timed on this machine (its anchor-dense.json). llama.cpp's are single-sequence engine
 * figures with no HTTP in between; only the one-stream level is comparable, so the other levels get no ratio.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { parseCommandArgs, parseNumberOption, runScript } from '../cli/args.ts';
import { REPO_ROOT, startSidecar } from '../cli/processes.ts';
import { ENV } from '../shared/protocol.ts';
import { readSseEvents, SSE_DONE } from '../shared/sse.ts';
import { BENCH_1B_SHAPE } from '../sidecar/convert/random-checkpoint.ts';
import { anchorReport, formatAnchorCell, readAnchor } from './anchor.ts';
import { bench1bModel, ensureBenchStore } from './bench-store.ts';
import { percentile, roundTo } from './stats.ts';

/** Generous: it only turns a sidecar that hangs while loading the 1.0B store into an error. */
const SIDECAR_READY_TIMEOUT_MS = 600_000;

interface StreamTiming {
  ttftMs: number;
  interTokenMs: number[];
  completionTokens: number;
  firstTokenAt: number;
  lastTokenAt: number;
  startedAt: number;
}

interface LevelResult {
  streams: number;
  decodeTokensPerSecond: number;
  endToEndTokensPerSecond: number;
  speedup: number;
  ttftMs: { p50: number; p99: number };
  /** Between SSE events as the client sees them (an event can carry several tokens). */
  interTokenMs: { p50: number; p99: number; max: number };
  /** Between tokens inside the sidecar, from its histogram (interpolated within buckets). */
  serverInterTokenMs: { p50: number; p99: number };
  completionTokens: number;
  wallSeconds: number;
  /** From the sidecar's /metrics: decode steps during the level, their mean batch size and duration. */
  steps: { count: number; meanBatch: number; meanMs: number };
}

interface Sidecar {
  url: string;
  stop(): Promise<void>;
}

async function startBenchSidecar(store: string, threads: number, maxBatch: number): Promise<Sidecar> {
  const { sidecar, url } = await startSidecar({
    serveArgs: ['--model', store, '--port', '0', '--threads', String(threads), '--max-batch', String(maxBatch), '--max-queue', '64'],
    env: { [ENV.sidecarSecret]: '' },
    // Its warnings and errors stay on screen, as the bench's own; its JSON access log does not.
    onLine: (line, stream) => {
      if (stream === 'stderr') console.error(line);
    },
    readyTimeoutMs: SIDECAR_READY_TIMEOUT_MS,
  });
  return {
    url,
    async stop() {
      await sidecar.stop({ graceMs: 60_000 });
    },
  };
}

/** One streaming request, timing every content event. */
async function timedStream(url: string, index: number, tokens: number): Promise<StreamTiming> {
  const startedAt = performance.now();
  const response = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'mistral-tiny',
      messages: [{ role: 'user', content: `Benchmark stream ${index}: write a long story about the sea and the wind.` }],
      max_tokens: tokens,
      temperature: 0.7,
      random_seed: index,
      stream: true,
    }),
  });
  if (!response.ok || !response.body) throw new Error(`stream ${index}: HTTP ${response.status} ${await response.text()}`);
  const arrivals: number[] = [];
  let completionTokens = 0;
  for await (const event of readSseEvents(response.body)) {
    if (event.data === SSE_DONE) continue;
    const chunk = JSON.parse(event.data) as {
      choices: Array<{ delta: { content?: string; role?: string } }>;
      usage?: { completion_tokens: number };
    };
    if (chunk.usage) completionTokens = chunk.usage.completion_tokens;
    else if (!chunk.choices[0]?.delta.role) arrivals.push(performance.now());
  }
  if (arrivals.length === 0) throw new Error(`stream ${index}: no content events`);
  return {
    startedAt,
    ttftMs: arrivals[0]! - startedAt,
    interTokenMs: arrivals.slice(1).map((at, i) => at - arrivals[i]!),
    completionTokens,
    firstTokenAt: arrivals[0]!,
    lastTokenAt: arrivals.at(-1)!,
  };
}

/** Percentile of the samples of one level, 0 when there are none. */
const levelPercentile = (samples: number[], p: number) => percentile(samples, p) ?? 0;

const round = (value: number, digits = 1) => roundTo(value, digits);

/** The sidecar's per-token inter-token latency histogram: cumulative counts by upper bound (s). */
async function interTokenHistogram(url: string): Promise<Map<number, number>> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const buckets = new Map<number, number>();
  for (const match of text.matchAll(/^sirocco_inter_token_latency_seconds_bucket\{le="([^"]+)",model="mistral-tiny"\} (\S+)$/gm)) {
    buckets.set(match[1] === '+Inf' ? Infinity : Number(match[1]), Number(match[2]));
  }
  return buckets;
}

/** Percentile (ms) of the tokens observed between two histogram snapshots, interpolated in its bucket. */
function histogramPercentile(before: Map<number, number>, after: Map<number, number>, p: number): number {
  const bounds = [...after.keys()].sort((a, b) => a - b);
  const counts = bounds.map((bound) => (after.get(bound) ?? 0) - (before.get(bound) ?? 0));
  const total = counts.at(-1) ?? 0;
  if (total === 0) return 0;
  const target = (p / 100) * total;
  for (let i = 0; i < bounds.length; i++) {
    if (counts[i]! < target) continue;
    const lower = i === 0 ? 0 : bounds[i - 1]!;
    const upper = Number.isFinite(bounds[i]!) ? bounds[i]! : lower;
    const below = i === 0 ? 0 : counts[i - 1]!;
    const inBucket = counts[i]! - below;
    return round((lower + ((target - below) / Math.max(1, inBucket)) * (upper - lower)) * 1000);
  }
  return 0;
}

/** Step counters of one kind from /metrics: how many ran, their total batch entries and seconds. */
async function stepCounters(
  url: string,
  kind: 'decode' | 'prefill' = 'decode',
): Promise<{ count: number; entries: number; seconds: number }> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const read = (name: string) => Number(new RegExp(`^${name}\\{model="mistral-tiny",kind="${kind}"\\} (\\S+)$`, 'm').exec(text)?.[1] ?? 0);
  return { count: read('sirocco_step_seconds_count'), entries: read('sirocco_batch_size_sum'), seconds: read('sirocco_step_seconds_sum') };
}

/**
 * Prefill tokens/s of one ~250-token prompt (64-token chunks): for scale, the engine's rate when
 * many rows go through the weights at once, as in a large decode batch (it also pays attention
 * over the growing prompt, so it is a rough guide rather than a hard ceiling).
 */
async function measurePrefill(url: string): Promise<number> {
  const before = await stepCounters(url, 'prefill');
  const response = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'mistral-tiny',
      messages: [{ role: 'user', content: 'The sea and the wind. '.repeat(40) }],
      max_tokens: 1,
    }),
  });
  const { usage } = (await response.json()) as { usage: { prompt_tokens: number } };
  const after = await stepCounters(url, 'prefill');
  return round(usage.prompt_tokens / (after.seconds - before.seconds), 2);
}

async function runLevel(url: string, streams: number, tokens: number): Promise<Omit<LevelResult, 'speedup'>> {
  const before = await stepCounters(url);
  const histogramBefore = await interTokenHistogram(url);
  const started = performance.now();
  const timings = await Promise.all(Array.from({ length: streams }, (_, index) => timedStream(url, index, tokens)));
  const finished = performance.now();
  const after = await stepCounters(url);
  const histogramAfter = await interTokenHistogram(url);
  const stepCount = after.count - before.count;
  const decodeTokens = timings.reduce((sum, t) => sum + Math.max(0, t.completionTokens - 1), 0);
  const decodeSpan = Math.max(...timings.map((t) => t.lastTokenAt)) - Math.min(...timings.map((t) => t.firstTokenAt));
  const completionTokens = timings.reduce((sum, t) => sum + t.completionTokens, 0);
  const interToken = timings.flatMap((t) => t.interTokenMs);
  const ttft = timings.map((t) => t.ttftMs);
  return {
    streams,
    decodeTokensPerSecond: round((decodeTokens * 1000) / decodeSpan, 2),
    endToEndTokensPerSecond: round((completionTokens * 1000) / (finished - started), 2),
    ttftMs: { p50: round(levelPercentile(ttft, 50)), p99: round(levelPercentile(ttft, 99)) },
    interTokenMs: {
      p50: round(levelPercentile(interToken, 50)),
      p99: round(levelPercentile(interToken, 99)),
      max: round(Math.max(...interToken)),
    },
    serverInterTokenMs: {
      p50: histogramPercentile(histogramBefore, histogramAfter, 50),
      p99: histogramPercentile(histogramBefore, histogramAfter, 99),
    },
    completionTokens,
    wallSeconds: round((finished - started) / 1000, 2),
    steps: {
      count: stepCount,
      meanBatch: round((after.entries - before.entries) / Math.max(1, stepCount), 2),
      meanMs: round(((after.seconds - before.seconds) * 1000) / Math.max(1, stepCount)),
    },
  };
}

async function main(): Promise<void> {
  const { values } = parseCommandArgs(process.argv.slice(2), {
    tokens: { type: 'string' },
    levels: { type: 'string' },
    threads: { type: 'string' },
    out: { type: 'string' },
  });
  const tokens = parseNumberOption(values.tokens, 'tokens', { integer: true, min: 2, max: 4000 }) ?? 64;
  const threads = parseNumberOption(values.threads, 'threads', { integer: true, min: 1 }) ?? 2;
  const levels = (values.levels ?? '1,4,8,16')
    .split(',')
    .map((level) => parseNumberOption(level, 'levels', { integer: true, min: 1, max: 64 })!);
  const out = resolve(values.out ?? join(REPO_ROOT, 'bench/results/sidecar.json'));
  // The sidecar serves bench:engine's 1.0B store, the shape llama.cpp's "dense" figures are for.
  const anchor = readAnchor('dense');

  const store = await ensureBenchStore(bench1bModel('int4'));
  const sidecar = await startBenchSidecar(store, threads, Math.max(...levels));
  const results: LevelResult[] = [];
  let prefillTokensPerSecond = 0;
  console.log(
    `load average before the run: ${loadavg()
      .map((value) => value.toFixed(1))
      .join(' ')} (${cpus().length} cores)`,
  );
  try {
    await runLevel(sidecar.url, 1, 8); // warm-up: first-run allocations and page faults
    for (const streams of levels) {
      const result = await runLevel(sidecar.url, streams, tokens);
      const single = results.find((r) => r.streams === 1)?.decodeTokensPerSecond ?? result.decodeTokensPerSecond;
      results.push({ ...result, speedup: round(result.decodeTokensPerSecond / single, 2) });
      console.log(`  ${streams} stream(s): ${result.decodeTokensPerSecond} decode tokens/s`);
    }
    prefillTokensPerSecond = await measurePrefill(sidecar.url);
  } finally {
    await sidecar.stop();
  }

  const single = results.find((r) => r.streams === 1);
  const eight = results.find((r) => r.streams === 8);
  const targets =
    single && eight
      ? {
          throughputAt8: { target: '>= 4x single stream', measured: eight.speedup, met: eight.speedup >= 4 },
          p99InterTokenAt8: {
            target: '< 2x single-stream p99 (per token, in the sidecar)',
            measured: round(eight.serverInterTokenMs.p99 / single.serverInterTokenMs.p99, 2),
            met: eight.serverInterTokenMs.p99 < 2 * single.serverInterTokenMs.p99,
            perSseEvent: round(eight.interTokenMs.p99 / single.interTokenMs.p99, 2),
          },
        }
      : null;

  console.log('');
  console.log(`sidecar bench: 1.0B Mistral int4, ${tokens} tokens per stream, ${threads} threads`);
  console.log(
    'streams | decode tok/s | speed-up | e2e tok/s | TTFT p50 / p99 ms | ITL p50 / p99 / max ms | token ITL p50 / p99 | decode steps | mean batch | mean step ms',
  );
  console.log(
    '--------|--------------|----------|-----------|-------------------|------------------------|---------------------|--------------|------------|-------------',
  );
  for (const r of results) {
    console.log(
      `${String(r.streams).padStart(7)} | ${String(r.decodeTokensPerSecond).padStart(12)} | ${`${r.speedup}x`.padStart(8)} | ${String(r.endToEndTokensPerSecond).padStart(9)} | ${`${r.ttftMs.p50} / ${r.ttftMs.p99}`.padStart(17)} | ${`${r.interTokenMs.p50} / ${r.interTokenMs.p99} / ${r.interTokenMs.max}`.padStart(22)} | ${`${r.serverInterTokenMs.p50} / ${r.serverInterTokenMs.p99}`.padStart(19)} | ${String(r.steps.count).padStart(12)} | ${String(r.steps.meanBatch).padStart(10)} | ${String(r.steps.meanMs).padStart(12)}`,
    );
  }
  console.log('');
  if (single) {
    console.log(
      `for scale: prefill of one ~250-token prompt ${prefillTokensPerSecond} tokens/s = ${round(prefillTokensPerSecond / single.decodeTokensPerSecond, 2)}x the single-stream decode rate`,
    );
  }
  if (anchor) {
    console.log(
      `llama.cpp Q4_0 on this machine (same shape): ${single ? `1-stream decode ours / llama.cpp = ${formatAnchorCell(single.decodeTokensPerSecond, anchor.decodeTokensPerSecond)}` : `decode ${anchor.decodeTokensPerSecond} tokens/s (no 1-stream level run)`}; prefill ours / llama.cpp = ${formatAnchorCell(prefillTokensPerSecond, anchor.prefillTokensPerSecond)}`,
    );
  }
  const llamaCppAnchor = anchor && anchorReport(anchor, { decode: single?.decodeTokensPerSecond ?? null, prefill: prefillTokensPerSecond });
  if (targets) {
    console.log(
      `8 streams: ${targets.throughputAt8.measured}x single-stream throughput (target ≥ 4x: ${targets.throughputAt8.met ? 'met' : 'not met'}); p99 per-token ITL ${targets.p99InterTokenAt8.measured}x single-stream, ${targets.p99InterTokenAt8.perSseEvent}x per SSE event (target < 2x: ${targets.p99InterTokenAt8.met ? 'met' : 'not met'})`,
    );
  }
  await mkdir(dirname(out), { recursive: true });
  await writeFile(
    out,
    `${JSON.stringify({ model: 'mistral-1b-int4 (random weights)', shape: BENCH_1B_SHAPE, tokensPerStream: tokens, threads, date: new Date().toISOString(), loadAverage: loadavg(), prefillTokensPerSecond, llamaCppAnchor, results, targets }, null, 2)}\n`,
  );
  console.log(`results written to ${out}`);
}

await runScript('bench:sidecar', main);
