/**
 * `npm run bench:moe`: Mixtral decode with experts paged from disk under a memory budget.
 *
 * Model: a random Mixtral-shaped checkpoint sized for a 2-core machine (dim 1024, 8 layers, 8 heads
 * / 2 KV heads × 128, 8 experts top-2, FFN 3584, vocab 32000), converted once per paged expert
 * format (int4 attention and head; int4 experts, and int8 experts) into $SIROCCO_HOME/bench/.
 * Each configuration runs in its own process (so peak RSS is its own): prefill --context tokens,
 * then decode feeding random tokens every step (like llama.cpp's random-token runs) so the routing
 * varies; last, time the prefill of a --prompt-token prompt on a sequence of its own (llama.cpp's
 * pp512 by default).
 *
 * Reported per expert format and budget (25/50/100 % of that format's expert bytes), and per
 * eviction policy / prefetch off at 50 % for int4: decode tokens/s, hit rate, prefetch accuracy
 * (predicted experts the router then picked), prefetch hits and wasted prefetches, page-in latency
 * next to the raw read time of the same expert files measured in this run (warm page cache, and
 * cold after dropping it when run as root), bytes paged per token, peak RSS. No --expert-cache-mb
 * (every expert resident, the same kernel and bytes) is the speed reference, run first and again
 * last (the two bracket the rest on a machine whose speed drifts). First, the kernel
 * alone against the machine's read bandwidth (kernel-roofline.ts).
 *
 *   --tokens N       decode tokens per configuration (default 96); --warmup N (default 8)
 *   --prompt N       tokens of the timed prefill (default 512, as llama.cpp's pp512; 0 skips it, e.g. on the
 *                    full 8x7B shape, where it takes minutes)
 *   --context N      tokens in the decoding sequence before its first timed step (default 16; llama.cpp's tg
 *                    starts from none): e.g. 3000 for what a long conversation's decode costs
 *   --store DIR --budgets-mb A,B   run on an existing paged store instead (e.g. the full 8x7B shape
 *                    from scripts/make-mixtral-shape.ts) at these budgets (MiB, or `auto` for the
 *                    engine's own choice), prefetch on; raw read and page-in are then sampled on
 *                    8 experts
 *   --policies P,Q   with --store: eviction policies to run at each budget (default lfu)
 *   --cold           drop the page cache before each paged run (root only; affects the whole host)
 *   --out FILE       JSON results (default bench/results/moe.json)
 *
 * With LLAMA_ANCHOR_DIR set (bench/anchor.ts), the resident decode and prefill are set against llama.cpp's figures for
 * this shape timed on this machine (its anchor-moe.json); not with --store, whose shape is not this one.
 */
import { spawnSync } from 'node:child_process';
import { mkdir, open, readdir, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CliError, parseCommandArgs, parseNumberOption, runScript } from '../cli/args.ts';
import type { ModelShape } from '../sidecar/convert/random-checkpoint.ts';
import {
  DEFAULT_EVICTION_POLICY,
  EVICTION_POLICIES,
  type EvictionPolicy,
  type ExpertBits,
  ExpertCache,
  type ExpertCacheStats,
  ExpertStore,
  loadModel,
  type Sequence,
} from '../sidecar/engine/index.ts';
import { anchorReport, formatAnchorCell, readAnchor } from './anchor.ts';
import { ensureBenchStore } from './bench-store.ts';
import { kernelRoofline } from './kernel-roofline.ts';
import { mean, percentile } from './stats.ts';

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const MiB = 1024 * 1024;
const RUN_ONE = '--run-one';
/** Prompt tokens per forward: a 512-token prompt in one, as bench:engine and llama.cpp's pp512 run it. */
const PREFILL_CHUNK = 512;

export const BENCH_MOE_SHAPE: ModelShape = {
  dim: 1024,
  nLayers: 8,
  nHeads: 8,
  nKvHeads: 2,
  headDim: 128,
  hiddenDim: 3584,
  vocabSize: 32000,
  slidingWindow: null,
  ropeTheta: 1e6,
  numExperts: 8,
  expertsPerToken: 2,
};

/** llama.cpp Q4_0 on this shape, these machines (docs/engine-facts.md): 130–219 tokens/s decode. */
const LLAMA_CPP_TOKENS_PER_SECOND = [130, 219];

interface RunConfig {
  store: string;
  /** MiB, 'auto' (sized by the engine from available memory), or null: every expert resident. */
  budgetMb: number | 'auto' | null;
  policy: EvictionPolicy;
  tokens: number;
  warmup: number;
  /** Tokens of the timed prefill. */
  prompt: number;
  /** Tokens in the decoding sequence before its first timed step. */
  context: number;
  prefetch: boolean;
}

interface RunResult {
  label: string;
  /** Paged expert format (null: no budget, every expert resident). */
  expertBits: ExpertBits | null;
  /** The budget the cache ran with (what 'auto' chose), MiB. */
  budgetMb: number | null;
  /** The budget was the engine's own choice (--expert-cache-mb auto). */
  auto: boolean;
  budgetFraction: number | null;
  policy: EvictionPolicy | null;
  prefetch: boolean;
  /** Null with --prompt 0. */
  prefillTokensPerSecond: number | null;
  decodeTokensPerSecond: number;
  hitRate: number | null;
  prefetchAccuracy: number | null;
  prefetchHits: number | null;
  prefetchWasted: number | null;
  pageIns: number | null;
  pageInMeanMs: number | null;
  pageInP50Ms: number | null;
  pageInP90Ms: number | null;
  pagedMbPerToken: number | null;
  /** Time per token the forward pass waited on page-ins (the rest overlapped with compute). */
  stallMsPerToken: number | null;
  peakRssMb: number;
}

function dropPageCache(): boolean {
  const result = spawnSync('sh', ['-c', 'sync && echo 3 > /proc/sys/vm/drop_caches'], { stdio: 'ignore' });
  return result.status === 0;
}

/** Reads every expert file once with the same positioned read the cache uses; ms per expert. */
async function rawReadMs(store: string, sample = Infinity): Promise<{ perExpertMs: number; gbPerSecond: number; files: number }> {
  const { dir } = await ExpertStore.open(store);
  const files = (await readdir(dir))
    .filter((f) => f.endsWith('.bin'))
    .sort()
    .slice(0, sample);
  const bytes = (await stat(join(dir, files[0]!))).size;
  const buffer = new Uint8Array(bytes);
  const started = performance.now();
  for (const file of files) {
    const handle = await open(join(dir, file), 'r');
    try {
      let done = 0;
      while (done < bytes) done += (await handle.read(buffer, done, bytes - done, done)).bytesRead;
    } finally {
      await handle.close();
    }
  }
  const ms = performance.now() - started;
  return { perExpertMs: ms / files.length, gbPerSecond: (bytes * files.length) / (ms / 1000) / 1e9, files: files.length };
}

/**
 * Page-in through the real cache path (open, one read into a recycled buffer, header check), the
 * same files in the same order as `rawReadMs`, with nothing else running. The first pass also
 * verifies each file's checksum (done once per process), so the second pass is the steady state.
 */
async function cachePageInMs(store: string, sample = Infinity): Promise<{ firstPassMs: number; steadyMs: number }> {
  const expertStore = await ExpertStore.open(store);
  const cache = new ExpertCache(expertStore, { budgetBytes: 2 * expertStore.expertBytes });
  const { layers, experts } = expertStore.index;
  // Same files, same order as rawReadMs (sorted names: L0-E0, L0-E1, …).
  const keys = Array.from({ length: layers * experts }, (_, i) => ({ layer: Math.floor(i / experts), expert: i % experts }))
    .sort((a, b) => `L${a.layer}-E${a.expert}.bin`.localeCompare(`L${b.layer}-E${b.expert}.bin`))
    .slice(0, sample);
  const pass = async () => {
    const started = performance.now();
    for (const { layer, expert } of keys) (await cache.acquire(layer, expert)).release();
    return (performance.now() - started) / keys.length;
  };
  const firstPassMs = await pass();
  return { firstPassMs, steadyMs: await pass() };
}

/** One configuration, in this (child) process. */
async function runOne(config: RunConfig): Promise<RunResult> {
  const pageIns: number[] = [];
  let measuring = false;
  const runtime = await loadModel(config.store, {
    threads: 2,
    ...(config.budgetMb === null
      ? {}
      : { expertCacheMb: config.budgetMb, expertCache: { policy: config.policy, prefetch: config.prefetch } }),
    onExpertPageIn: (seconds) => void (measuring && pageIns.push(seconds * 1000)),
  });
  let state = 12345;
  const randomToken = () => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    return 3 + (state % (BENCH_MOE_SHAPE.vocabSize - 3));
  };
  /** `count` tokens into `sequence`, BOS first, at most PREFILL_CHUNK per forward. */
  const prefill = async (sequence: Sequence, count: number) => {
    const tokens = [1, ...Array.from({ length: count - 1 }, randomToken)];
    for (let at = 0; at < tokens.length; at += PREFILL_CHUNK) {
      await runtime.forward([{ sequence, tokens: tokens.slice(at, at + PREFILL_CHUNK) }]);
    }
  };
  try {
    const sequence = runtime.createSequence();
    await prefill(sequence, config.context);
    for (let i = 0; i < config.warmup; i++) await runtime.forward([{ sequence, tokens: [randomToken()] }]);
    const before = runtime.expertCacheStats?.() ?? null;
    measuring = true;
    const started = performance.now();
    for (let i = 0; i < config.tokens; i++) await runtime.forward([{ sequence, tokens: [randomToken()] }]);
    const seconds = (performance.now() - started) / 1000;
    measuring = false;
    const after = runtime.expertCacheStats?.() ?? null;
    // The timed prefill last, in a warm process, so that it leaves the decode's cache as it was.
    let prefillTokensPerSecond: number | null = null;
    if (config.prompt > 0) {
      const prompt = runtime.createSequence();
      const prefillStarted = performance.now();
      await prefill(prompt, config.prompt);
      prefillTokensPerSecond = config.prompt / ((performance.now() - prefillStarted) / 1000);
      runtime.releaseSequence(prompt);
    }
    const diff = (key: keyof ExpertCacheStats) => (before && after ? (after[key] as number) - (before[key] as number) : null);
    const hits = diff('hits');
    const misses = diff('misses');
    const predictionsMade = diff('predictionsMade');
    const paged = config.budgetMb === null ? null : await ExpertStore.open(config.store);
    const { layers, experts } = paged?.index ?? { layers: 1, experts: 1 };
    const expertBytes = after?.expertBytes ?? 1;
    return {
      label: paged ? `${paged.index.quantization} ${config.policy}${config.prefetch ? '' : ' no-prefetch'}` : 'resident q4_0',
      expertBits: paged?.bits ?? null,
      budgetMb: config.budgetMb === null || !after ? null : after.budgetBytes / MiB,
      auto: config.budgetMb === 'auto',
      budgetFraction:
        config.budgetMb === null || !after ? null : Math.round((after.budgetBytes / (layers * experts * expertBytes)) * 100) / 100,
      policy: config.budgetMb === null ? null : config.policy,
      prefetch: config.prefetch,
      prefillTokensPerSecond,
      decodeTokensPerSecond: config.tokens / seconds,
      hitRate: hits === null || misses === null ? null : hits / Math.max(1, hits + misses),
      prefetchAccuracy: predictionsMade ? diff('predictionsUsed')! / predictionsMade : null,
      prefetchHits: diff('prefetchHits'),
      prefetchWasted: diff('prefetchWasted'),
      pageIns: pageIns.length,
      pageInMeanMs: mean(pageIns) ?? null,
      pageInP50Ms: percentile(pageIns, 50) ?? null,
      pageInP90Ms: percentile(pageIns, 90) ?? null,
      pagedMbPerToken: diff('bytesPagedIn') === null ? null : diff('bytesPagedIn')! / MiB / config.tokens,
      stallMsPerToken: diff('stallSecondsTotal') === null ? null : (diff('stallSecondsTotal')! * 1000) / config.tokens,
      peakRssMb: process.resourceUsage().maxRSS / 1024,
    };
  } finally {
    await runtime.dispose();
  }
}

function runChild(config: RunConfig): RunResult {
  const child = spawnSync(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), RUN_ONE, JSON.stringify(config)], {
    cwd: REPO_ROOT,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 16 * MiB,
  });
  if (child.status !== 0) throw new Error(`benchmark run ${JSON.stringify(config)} failed (exit ${child.status})`);
  return JSON.parse(child.stdout.trim().split('\n').pop()!) as RunResult;
}

const fmt = (value: number | null, digits = 1) => (value === null ? '—' : value.toFixed(digits));

async function main(argv: string[]): Promise<void> {
  if (argv[0] === RUN_ONE) {
    process.stdout.write(`${JSON.stringify(await runOne(JSON.parse(argv[1]!) as RunConfig))}\n`);
    return;
  }
  const { values } = parseCommandArgs(argv, {
    tokens: { type: 'string' },
    warmup: { type: 'string' },
    cold: { type: 'boolean' },
    out: { type: 'string' },
    store: { type: 'string' },
    'budgets-mb': { type: 'string' },
    policies: { type: 'string' },
    prompt: { type: 'string' },
    context: { type: 'string' },
  });
  const tokens = parseNumberOption(values.tokens as string | undefined, 'tokens', { integer: true, min: 1 }) ?? 96;
  const warmup = parseNumberOption(values.warmup as string | undefined, 'warmup', { integer: true, min: 0 }) ?? 8;
  const prompt = parseNumberOption(values.prompt as string | undefined, 'prompt', { integer: true, min: 0 }) ?? 512;
  const context = parseNumberOption(values.context as string | undefined, 'context', { integer: true, min: 1 }) ?? 16;
  const cold = values.cold === true;
  const policies = String(values.policies ?? DEFAULT_EVICTION_POLICY)
    .split(',')
    .map((policy) => {
      if (!(EVICTION_POLICIES as readonly string[]).includes(policy))
        throw new CliError(`--policies must list ${EVICTION_POLICIES.join(', ')}, got "${policy}"`);
      return policy as EvictionPolicy;
    });
  const out = resolve(
    (values.out as string | undefined) ?? join(REPO_ROOT, values.store ? 'bench/results/moe-store.json' : 'bench/results/moe.json'),
  );

  const customStore = values.store as string | undefined;
  const anchor = customStore ? null : readAnchor('moe');
  // The kernel alone first, on a quiet process: one Mixtral-sized expert against the read bandwidth.
  const kernel = await kernelRoofline();
  const stores = customStore ? [resolve(customStore)] : [];
  if (!customStore) {
    for (const bits of [4, 8] as const) {
      stores.push(
        await ensureBenchStore({
          name: `moe-d1024-l8-e8-f3584-int4-experts${bits}`,
          shape: BENCH_MOE_SHAPE,
          seed: 5,
          precision: 'int4',
          expertBits: bits,
        }),
      );
    }
  }
  const sample = customStore ? 8 : Infinity;

  // Per store: its expert format, the raw read of its expert files (warm, and cold when the page
  // cache can be dropped) and the cache's page-in of the same files.
  const formats = [];
  for (const store of stores) {
    const expertStore = await ExpertStore.open(store);
    const { layers, experts } = expertStore.index;
    await rawReadMs(store, sample); // warm the page cache
    const warmRead = await rawReadMs(store, sample);
    const pageIn = await cachePageInMs(store, sample);
    const canDrop = cold && dropPageCache();
    const coldRead = canDrop ? await rawReadMs(store, sample) : null;
    if (canDrop) dropPageCache();
    const coldPageIn = canDrop ? await cachePageInMs(store, sample) : null;
    formats.push({
      store,
      bits: expertStore.bits,
      expertBytes: expertStore.expertBytes,
      allMb: (layers * experts * expertStore.expertBytes) / MiB,
      warmRead,
      pageIn,
      coldRead,
      coldPageIn,
      canDrop,
    });
  }

  const configs: RunConfig[] = [];
  for (const format of formats) {
    const base = { store: format.store, tokens, warmup, prompt, context, prefetch: true };
    if (customStore) {
      for (const mb of String(values['budgets-mb'] ?? format.allMb).split(',')) {
        const budgetMb = mb.trim() === 'auto' ? 'auto' : parseNumberOption(mb, 'budgets-mb', { min: 0 })!;
        for (const policy of policies) configs.push({ ...base, budgetMb, policy });
      }
      continue;
    }
    if (format === formats[0]) configs.push({ ...base, budgetMb: null, policy: DEFAULT_EVICTION_POLICY });
    configs.push(...[1, 0.5, 0.25].map((fraction) => ({ ...base, budgetMb: format.allMb * fraction, policy: DEFAULT_EVICTION_POLICY })));
    if (format.bits === 4) {
      configs.push(
        ...EVICTION_POLICIES.filter((p) => p !== DEFAULT_EVICTION_POLICY).map((policy) => ({
          ...base,
          budgetMb: format.allMb * 0.5,
          policy,
        })),
      );
      configs.push({ ...base, budgetMb: format.allMb * 0.5, policy: DEFAULT_EVICTION_POLICY, prefetch: false });
    }
  }
  // The no-budget run once more at the end: this VM's speed drifts between minutes, and the two
  // runs bracket the budgets' runs.
  if (configs[0]?.budgetMb === null) configs.push(configs[0]);
  const results: RunResult[] = [];
  for (const config of configs) {
    if (cold && formats[0]!.canDrop && config.budgetMb !== null) dropPageCache();
    const result = runChild(config);
    results.push(result);
    console.error(
      `  ${result.label} ${fmt(result.budgetFraction === null ? null : result.budgetFraction * 100, 0)}%: ${fmt(result.decodeTokensPerSecond)} tok/s`,
    );
  }

  const rows = results.map((r, i) => ({
    config:
      r.budgetMb === null
        ? `no --expert-cache-mb (q4_0, all resident)${i > 0 ? ', again last' : ''}`
        : `${r.label} ${fmt(r.budgetFraction! * 100, 0)}% (${r.auto ? 'auto: ' : ''}${fmt(r.budgetMb, 0)} MiB)`,
    'tok/s': fmt(r.decodeTokensPerSecond),
    ...(anchor && { 'vs llama.cpp': `${fmt(r.decodeTokensPerSecond / anchor.decodeTokensPerSecond, 2)}×` }),
    ...(prompt > 0 && { [`prefill ${prompt} tok/s`]: fmt(r.prefillTokensPerSecond) }),
    'hit rate': r.hitRate === null ? '—' : `${fmt(r.hitRate * 100, 0)}%`,
    'prefetch acc': r.prefetchAccuracy === null ? '—' : `${fmt(r.prefetchAccuracy * 100, 0)}%`,
    'pf hits/wasted': r.prefetchHits === null ? '—' : `${r.prefetchHits}/${r.prefetchWasted}`,
    'page-in p50/p90 ms': r.pageInP50Ms === null ? '—' : `${fmt(r.pageInP50Ms, 2)}/${fmt(r.pageInP90Ms, 2)}`,
    'stall ms/tok': fmt(r.stallMsPerToken, 2),
    'MiB paged/tok': fmt(r.pagedMbPerToken),
    'peak RSS MiB': fmt(r.peakRssMb, 0),
  }));
  console.table(rows);
  const resident = results.find((r) => r.budgetMb === null) ?? null;
  const residentAgain = results.findLast((r) => r.budgetMb === null && r !== resident) ?? null;
  const summary = formats.map((format) => {
    const mine = results.filter((r) => r.expertBits === format.bits && r.policy === DEFAULT_EVICTION_POLICY && r.prefetch);
    const all = mine.find((r) => r.budgetFraction === 1) ?? null;
    const half = mine.find((r) => r.budgetFraction === 0.5) ?? null;
    return {
      expertBits: format.bits,
      expertFileBytes: format.expertBytes,
      rawReadWarmMsPerExpert: format.warmRead.perExpertMs,
      rawReadWarmGBps: format.warmRead.gbPerSecond,
      rawReadColdMsPerExpert: format.coldRead?.perExpertMs ?? null,
      pageInWarmFirstPassMs: format.pageIn.firstPassMs,
      pageInWarmMs: format.pageIn.steadyMs,
      pageInColdMs: format.coldPageIn?.firstPassMs ?? null,
      pageCacheDropped: format.canDrop,
      pageInOverRawRead: format.pageIn.steadyMs / format.warmRead.perExpertMs,
      pageInOverRawReadCold: format.coldPageIn && format.coldRead ? format.coldPageIn.firstPassMs / format.coldRead.perExpertMs : null,
      allPagedTokensPerSecond: all?.decodeTokensPerSecond ?? null,
      halfBudgetOverAllPaged: half && all ? half.decodeTokensPerSecond / all.decodeTokensPerSecond : null,
      halfBudgetOverResidentSessions: half && resident ? half.decodeTokensPerSecond / resident.decodeTokensPerSecond : null,
    };
  });
  for (const f of summary) {
    console.log(
      `int${f.expertBits} experts: file ${fmt(f.expertFileBytes / MiB, 2)} MiB; raw read ${fmt(f.rawReadWarmMsPerExpert, 2)} ms warm` +
        (f.rawReadColdMsPerExpert !== null
          ? `, ${fmt(f.rawReadColdMsPerExpert, 2)} ms cold`
          : cold
            ? ' (cold: cannot drop the page cache here)'
            : '') +
        `; cache page-in ${fmt(f.pageInWarmMs, 2)} ms warm (${fmt(f.pageInWarmFirstPassMs, 2)} ms with the one-time checksum)` +
        (f.pageInColdMs !== null ? `, ${fmt(f.pageInColdMs, 2)} ms cold` : '') +
        ` = ${fmt(f.pageInOverRawRead, 2)}× raw read (target ≤ 2×)` +
        (f.halfBudgetOverAllPaged === null
          ? ''
          : `; 50% budget at ${fmt(f.halfBudgetOverAllPaged * 100, 0)}% of a 100% budget (target ≥ 60%)`) +
        (f.halfBudgetOverResidentSessions === null
          ? ''
          : `, ${fmt(f.halfBudgetOverResidentSessions * 100, 0)}% of no budget (all resident)`),
    );
  }
  // The documented llama.cpp figures are for the bench shape; a --store run has no resident row to set against them.
  if (resident) {
    console.log(
      `all experts resident (no budget): ${fmt(resident.decodeTokensPerSecond)} tok/s` +
        (residentAgain ? ` first, ${fmt(residentAgain.decodeTokensPerSecond)} last` : '') +
        summary.map((f) => `, int${f.expertBits} at a 100% budget ${fmt(f.allPagedTokensPerSecond)}`).join('') +
        `; llama.cpp Q4_0 ${LLAMA_CPP_TOKENS_PER_SECOND.join('–')} tok/s`,
    );
  }
  const llamaCppAnchor =
    anchor && anchorReport(anchor, { decode: resident?.decodeTokensPerSecond ?? null, prefill: resident?.prefillTokensPerSecond ?? null });
  if (anchor) {
    console.log(
      `llama.cpp Q4_0 on this machine: decode ${fmt(anchor.decodeTokensPerSecond)} tok/s` +
        (resident
          ? `, ours (q4_0, no budget) / llama.cpp = ${formatAnchorCell(resident.decodeTokensPerSecond, anchor.decodeTokensPerSecond)}`
          : '') +
        (residentAgain ? ` (last run: ${formatAnchorCell(residentAgain.decodeTokensPerSecond, anchor.decodeTokensPerSecond)})` : '') +
        `; prefill (pp512) ${fmt(anchor.prefillTokensPerSecond)} tok/s` +
        (resident?.prefillTokensPerSecond
          ? `, ours (${prompt}-token prompt) / llama.cpp = ${formatAnchorCell(resident.prefillTokensPerSecond, anchor.prefillTokensPerSecond)}`
          : '') +
        (context > 16 ? `; our decode ran after ${context} tokens of context, llama.cpp's from none` : ''),
    );
  }
  const llamaCppQ4_0TokensPerSecond = LLAMA_CPP_TOKENS_PER_SECOND;
  await mkdir(dirname(out), { recursive: true });
  await writeFile(
    out,
    `${JSON.stringify({ shape: BENCH_MOE_SHAPE, tokens, warmup, prompt, context, kernel, llamaCppQ4_0TokensPerSecond, llamaCppAnchor, summary, results }, null, 2)}\n`,
  );
  console.log(`wrote ${out}`);
}

await runScript('bench:moe', () => main(process.argv.slice(2)));
