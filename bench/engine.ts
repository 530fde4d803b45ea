/**
 * `npm run bench:engine`: single-sequence engine speed on the 1.0B-parameter Mistral bench shape
 * (dim 2048, 16 layers, 16 heads / 4 KV heads, head_dim 128, FFN 7168, vocab 32000), random weights.
 *
 * Reports decode tokens/s, prefill tokens/s and time to first token for a --prompt-token prompt,
 * peak RSS, and effective GB/s (weight bytes read per decoded token × tokens/s) next to this
 * machine's single-thread memory read bandwidth, measured in the same run (memchr over a 1 GiB
 * buffer, best of 5). Anchor (docs/engine-facts.md): llama.cpp Q4_0 on these 2-core machines decodes this shape
 * at ≈ 36 tokens/s (≈ 19.5 GB/s effective) and prefills at ≈ 109 tokens/s.
 *
 *   --precision P   int4 (default) | int8 | fp32
 *   --threads N     onnxruntime intra-op threads (default 2)
 *   --tokens N      decoded tokens timed (default 64)
 *   --prompt N      prompt length for time to first token (default 512)
 *   --out FILE      JSON results (default bench/results/engine.json)
 *
 *   --batches LIST  batch sizes for the batched-decode table (default 1,2,4,8,16; "" skips it)
 *
 * With LLAMA_ANCHOR_DIR set (bench/anchor.ts), decode and prefill are set against llama.cpp's figures for this shape
 * timed on this machine (its anchor-dense.json) rather than the documented ones.
 *
 * The batched-decode table runs the engine's own batch dimension with no HTTP or scheduler in
 * between: that many sequences (32-token prompts) decode together, and each size reports ms per
 * step, aggregate tokens/s, the speed-up over one sequence and the marginal cost of each extra
 * row — what bench:sidecar's throughput at N streams is built from.
 *
 * The store is built once into $SIROCCO_HOME/bench/mistral-1b-<precision> (bench:sidecar shares
 * the int4 one) and reused.
 */
import { mkdir, stat, writeFile } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { parseCommandArgs, parseNumberOption, runScript } from '../cli/args.ts';
import { parsePrecision } from '../cli/engine-flags.ts';
import { BENCH_1B_SHAPE } from '../sidecar/convert/random-checkpoint.ts';
import { loadModel, type ModelRuntime } from '../sidecar/engine/index.ts';
import { readManifest } from '../sidecar/formats/store-manifest.ts';
import { argmax } from '../sidecar/sampling/sampler.ts';
import { anchorReport, formatAnchorCell, readAnchor } from './anchor.ts';
import { bench1bModel, ensureBenchStore } from './bench-store.ts';

/** Single-thread sequential read bandwidth in GB/s: memchr over 1 GiB that never matches. */
function measureReadBandwidth(): number {
  const bytes = 1 << 30;
  const buffer = Buffer.alloc(bytes, 1);
  let best = Infinity;
  for (let i = 0; i < 5; i++) {
    const start = process.hrtime.bigint();
    if (buffer.indexOf(0) !== -1) throw new Error('unreachable');
    best = Math.min(best, Number(process.hrtime.bigint() - start) / 1e9);
  }
  return bytes / best / 1e9;
}

/** Deterministic token ids in [3, vocab). */
function promptTokens(count: number, vocab: number): number[] {
  let state = 12345;
  return Array.from({ length: count }, () => {
    state = (state * 1103515245 + 12345) % 2 ** 31;
    return 3 + (state % (vocab - 3));
  });
}

interface BatchedDecode {
  batch: number;
  msPerStep: number;
  cpuMsPerStep: number;
  tokensPerSecond: number;
  speedup: number;
  /** (ms per step − the single sequence's) / (batch − 1). */
  marginalMsPerRow: number;
}

/** Decode steps over `batch` sequences at once, for each batch size. */
async function measureBatchedDecode(runtime: ModelRuntime, vocab: number, batches: number[], steps: number): Promise<BatchedDecode[]> {
  const results: BatchedDecode[] = [];
  for (const batch of batches) {
    const sequences = Array.from({ length: batch }, () => runtime.createSequence());
    let logits = await runtime.forward(sequences.map((sequence, i) => ({ sequence, tokens: promptTokens(32 + i, vocab).slice(i) })));
    const next = () => sequences.map((sequence, i) => ({ sequence, tokens: [argmax(logits[i]!)] }));
    for (let i = 0; i < 2; i++) logits = await runtime.forward(next()); // warm this batch shape
    const start = performance.now();
    const cpuStart = process.cpuUsage();
    for (let i = 0; i < steps; i++) logits = await runtime.forward(next());
    const cpu = process.cpuUsage(cpuStart);
    const msPerStep = (performance.now() - start) / steps;
    for (const sequence of sequences) runtime.releaseSequence(sequence);
    const single = results[0]?.batch === 1 ? results[0].msPerStep : msPerStep;
    results.push({
      batch,
      msPerStep,
      cpuMsPerStep: (cpu.user + cpu.system) / 1000 / steps,
      tokensPerSecond: (batch * 1000) / msPerStep,
      speedup: (batch * single) / msPerStep,
      marginalMsPerRow: batch > 1 ? (msPerStep - single) / (batch - 1) : 0,
    });
    console.log(`  batch ${batch}: ${msPerStep.toFixed(1)} ms/step`);
  }
  return results;
}

async function main(): Promise<void> {
  const { values } = parseCommandArgs(process.argv.slice(2), {
    precision: { type: 'string' },
    threads: { type: 'string' },
    tokens: { type: 'string' },
    prompt: { type: 'string' },
    out: { type: 'string', default: 'bench/results/engine.json' },
    batches: { type: 'string', default: '1,2,4,8,16' },
  });
  const batches = values.batches
    .split(',')
    .filter((b) => b.trim() !== '')
    .map((b) => parseNumberOption(b.trim(), 'batches', { integer: true, min: 1 }) as number);
  const precision = parsePrecision(values.precision) ?? 'int4';
  const threads = parseNumberOption(values.threads, 'threads', { integer: true, min: 1 }) ?? 2;
  const decodeTokens = parseNumberOption(values.tokens, 'tokens', { integer: true, min: 1 }) ?? 64;
  const promptLength = parseNumberOption(values.prompt, 'prompt', { integer: true, min: 1 }) ?? 512;
  // Read before the run, so a broken anchor file is reported at once rather than after minutes of measuring.
  const anchor = readAnchor('dense');

  const store = await ensureBenchStore(bench1bModel(precision));
  const manifest = await readManifest(store);
  const { vocabSize, dim } = manifest.config;
  // Bytes a decode step reads: every weight file, except that the embedding Gather reads one row.
  let weightBytes = 0;
  for (const file of manifest.files) if (file.path.endsWith('.bin')) weightBytes += file.bytes;
  weightBytes -= (vocabSize - 1) * dim * 4;

  console.log('measuring memory read bandwidth…');
  const bandwidth = measureReadBandwidth();

  const loadStart = performance.now();
  const runtime = await loadModel(store, { threads });
  const loadSeconds = (performance.now() - loadStart) / 1000;

  // Warm-up: a short prompt and a few decode steps (first runs allocate arenas).
  const warm = runtime.createSequence();
  let [logits] = await runtime.forward([{ sequence: warm, tokens: promptTokens(16, vocabSize) }]);
  for (let i = 0; i < 4; i++) [logits] = await runtime.forward([{ sequence: warm, tokens: [argmax(logits!)] }]);
  runtime.releaseSequence(warm);

  const sequence = runtime.createSequence();
  const prefillStart = performance.now();
  [logits] = await runtime.forward([{ sequence, tokens: promptTokens(promptLength, vocabSize) }]);
  const ttftSeconds = (performance.now() - prefillStart) / 1000;

  const decodeStart = performance.now();
  const cpuStart = process.cpuUsage();
  for (let i = 0; i < decodeTokens; i++) [logits] = await runtime.forward([{ sequence, tokens: [argmax(logits!)] }]);
  const decodeSeconds = (performance.now() - decodeStart) / 1000;
  const cpu = process.cpuUsage(cpuStart);
  const decodeCpuMsPerToken = (cpu.user + cpu.system) / 1000 / decodeTokens;
  runtime.releaseSequence(sequence);

  if (batches.length) console.log('batched decode…');
  const batchedDecode = await measureBatchedDecode(runtime, vocabSize, batches, 8);
  await runtime.dispose();

  const decodeTps = decodeTokens / decodeSeconds;
  const effective = (weightBytes * decodeTps) / 1e9;
  const result = {
    shape: BENCH_1B_SHAPE,
    precision,
    threads,
    store,
    weightBytesPerToken: weightBytes,
    loadSeconds,
    promptTokens: promptLength,
    timeToFirstTokenMs: ttftSeconds * 1000,
    prefillTokensPerSecond: promptLength / ttftSeconds,
    decodeTokens,
    decodeTokensPerSecond: decodeTps,
    decodeMsPerToken: (decodeSeconds / decodeTokens) * 1000,
    // CPU time across all threads: less sensitive than wall time to other work on the machine.
    decodeCpuMsPerToken,
    loadAverage: loadavg(),
    effectiveGBps: effective,
    memoryReadGBps: bandwidth,
    rooflineTokensPerSecond: (bandwidth * 1e9) / weightBytes,
    fractionOfRoofline: effective / bandwidth,
    batchedDecode,
    peakRssMiB: (process.resourceUsage().maxRSS * 1024) / 2 ** 20,
    llamaCppQ4_0: { decodeTokensPerSecond: 36.2, prefillTokensPerSecond: 109, effectiveGBps: 19.5 },
    llamaCppAnchor: anchor && anchorReport(anchor, { decode: decodeTps, prefill: promptLength / ttftSeconds }),
    measuredAt: new Date().toISOString(),
  };

  const rows: Array<[string, string]> = [
    ['model', `1.0B Mistral shape, ${precision}, ${threads} threads`],
    ['weights read per token', `${(weightBytes / 2 ** 20).toFixed(0)} MiB`],
    ['load', `${loadSeconds.toFixed(2)} s`],
    [`time to first token (${promptLength}-token prompt)`, `${result.timeToFirstTokenMs.toFixed(0)} ms`],
    [
      'prefill',
      `${result.prefillTokensPerSecond.toFixed(1)} tokens/s   (${anchor ? `ours / llama.cpp Q4_0 here = ${formatAnchorCell(result.prefillTokensPerSecond, anchor.prefillTokensPerSecond)}` : 'llama.cpp Q4_0: 109'})`,
    ],
    [
      'decode',
      `${decodeTps.toFixed(1)} tokens/s, ${result.decodeMsPerToken.toFixed(1)} ms/token   (${anchor ? `ours / llama.cpp Q4_0 here = ${formatAnchorCell(decodeTps, anchor.decodeTokensPerSecond)}` : 'llama.cpp Q4_0: 36.2'})`,
    ],
    ['effective bandwidth', `${effective.toFixed(1)} GB/s   (llama.cpp Q4_0: 19.5)`],
    ['memory read bandwidth (measured)', `${bandwidth.toFixed(1)} GB/s → roofline ${result.rooflineTokensPerSecond.toFixed(1)} tokens/s`],
    ['decode vs roofline', `${(100 * result.fractionOfRoofline).toFixed(0)}%   (target ≥ 70%)`],
    ['peak RSS', `${result.peakRssMiB.toFixed(0)} MiB`],
    ['decode CPU time (all threads)', `${decodeCpuMsPerToken.toFixed(1)} ms/token`],
    [
      'load average (1/5/15 min)',
      `${loadavg()
        .map((l) => l.toFixed(1))
        .join(' / ')}   (> ${cpus().length}: other work shared the cores)`,
    ],
  ];
  const width = Math.max(...rows.map(([label]) => label.length));
  console.log(`\n${rows.map(([label, value]) => `${label.padEnd(width)}  ${value}`).join('\n')}`);
  if (batchedDecode.length) {
    console.log('\nbatched decode | ms/step | CPU ms/step | tokens/s | speed-up | marginal ms/row');
    console.log('---------------|---------|-------------|----------|----------|----------------');
    for (const b of batchedDecode) {
      console.log(
        `${String(b.batch).padStart(14)} | ${b.msPerStep.toFixed(1).padStart(7)} | ${b.cpuMsPerStep.toFixed(1).padStart(11)} | ${b.tokensPerSecond.toFixed(1).padStart(8)} | ${`${b.speedup.toFixed(2)}x`.padStart(8)} | ${b.marginalMsPerRow.toFixed(1).padStart(15)}`,
      );
    }
  }

  await mkdir(dirname(values.out), { recursive: true });
  await writeFile(values.out, `${JSON.stringify(result, null, 2)}\n`);
  console.log(`\nwrote ${values.out}`);
  // The store stays for the next run; print its size so nobody is surprised by the disk use.
  const bytes = (await Promise.all(manifest.files.map((f) => stat(join(store, f.path))))).reduce((sum, s) => sum + s.size, 0);
  console.log(`store ${store}: ${(bytes / 2 ** 30).toFixed(2)} GiB`);
}

await runScript('bench:engine', main);
