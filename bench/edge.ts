/**
 * `npm run bench:edge`: what the edge adds to a request, and how fast it serves cached answers.
 *
 * Real processes: the worker (auth, rate-limit Durable Object, validation, cache, routing, HMAC
 * signing, streaming) runs in workerd in front of an upstream, and autocannon drives both the edge
 * and the upstream directly with the same chat request. The difference is the edge's cost.
 *
 *   --runner miniflare   the bundle `wrangler deploy` uploads, served by Miniflare with wrangler.toml's
 *                        bindings: the worker as in production (the ≤ 2 ms p50 target is judged here);
 *   --runner wrangler    `wrangler dev`, what `npm start` runs (adds wrangler's local dev proxy);
 *   --runner both        (default) one after the other.
 *   --upstream instant   (default) a minimal Mistral-compatible server in its own process that answers
 *                        at once, so the figures are pure edge overhead;
 *   --upstream demo      a real `sirocco serve` sidecar on the demo model (via `sirocco dev`'s launcher);
 *                        the direct baseline calls it signed, as the edge does.
 *   --ledger on|off|both (default both) with the usage ledger's bindings (USAGE_QUEUE, USAGE_DB: each request
 *                        queues an event from waitUntil, the worker's consumer writes D1) or without them; "both"
 *                        runs the miniflare edge twice, so the two rows show what the ledger adds to the first
 *                        byte. wrangler dev always runs with wrangler.toml's bindings (ledger on).
 *   --duration <s>       seconds per measurement (default 5); --out <file> (default bench/results/edge.json).
 *
 * Latency is time to first byte: from the request leaving autocannon to its response headers (for
 * the edge that is after the first upstream chunk, since it commits the status only then), measured
 * per request in float milliseconds; percentiles are nearest-rank over every request of a run. The
 * load average is printed with the table: on a shared machine the figures move with it.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Miniflare, type MiniflareOptions } from 'miniflare';
import { CliError, parseCommandArgs, parseNumberOption } from '../cli/args.ts';
import { startStack } from '../cli/commands/dev.ts';
import {
  applyLocalD1Migrations,
  freePort,
  type ManagedProcess,
  REPO_ROOT,
  spawnNode,
  spawnWranglerDev,
  WRANGLER_BIN,
  waitForLine,
  waitUntilReady,
} from '../cli/processes.ts';
import type { ChatCompletionRequest } from '../shared/api.ts';
import { ENV, type LoadReport, SIDECAR_PATHS } from '../shared/protocol.ts';
import { signRequest } from '../shared/signing.ts';
import { encodeSseData, SSE_DONE, SSE_HEADERS } from '../shared/sse.ts';
import { percentile, roundTo } from './stats.ts';

const TARGET_ADDED_P50_MS = 2;
/** Internal: run only the instant upstream and print its URL (see startInstantUpstream). */
const UPSTREAM_FLAG = '--serve-instant-upstream';
const CHAT_PATH = '/v1/chat/completions';

// ─── autocannon (CommonJS, no bundled types): the slice of its API used here ───

interface AutocannonClient {
  on(event: 'headers', listener: () => void): void;
  /** Internal FIFO of in-flight requests; its head carries the hrtime the request was sent at. */
  pipelinedRequests: { peek(): { startTime: [number, number] } | undefined };
}
interface AutocannonResult {
  requests: { average: number };
  non2xx: number;
  errors: number;
  timeouts: number;
  statusCodeStats: Record<string, { count: number }>;
}
type Autocannon = (options: {
  url: string;
  method: 'POST';
  headers: Record<string, string>;
  body: string;
  connections: number;
  duration: number;
  setupClient?: (client: AutocannonClient) => void;
}) => Promise<AutocannonResult>;
const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon;

// ─── The instant upstream ─────────────────────────────────────────────────────

const MODELS = ['mistral-tiny', 'mistral-small'];
const usage = { prompt_tokens: 12, completion_tokens: 5, total_tokens: 17 };

/** Pre-encoded answers: the upstream does no work beyond reading the request. */
function instantAnswers() {
  const base = { id: 'cmpl-bench', created: 1_700_000_000, model: 'mistral-tiny' };
  const json = JSON.stringify({
    ...base,
    object: 'chat.completion',
    choices: [{ index: 0, message: { role: 'assistant', content: 'The sirocco blows from the Sahara.' }, finish_reason: 'stop' }],
    usage,
  });
  const chunk = { ...base, object: 'chat.completion.chunk' };
  const events = [
    encodeSseData({ ...chunk, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] }),
    encodeSseData({ ...chunk, choices: [{ index: 0, delta: { content: 'The sirocco blows from the Sahara.' }, finish_reason: null }] }),
    encodeSseData({ ...chunk, choices: [{ index: 0, delta: { content: '' }, finish_reason: 'stop' }], usage }),
    encodeSseData(SSE_DONE),
  ];
  return { json, events };
}

/** A Mistral-compatible server that answers every chat request at once (JSON or SSE, one write per event). */
async function serveInstantUpstream(region: string): Promise<string> {
  const { json, events } = instantAnswers();
  const ready: LoadReport = {
    ready: true,
    region,
    models: MODELS,
    queueDepth: 0,
    activeSequences: 0,
    maxBatch: 64,
    maxQueue: 1024,
    tokensPerSecond: 0,
  };
  const server = createServer((request: IncomingMessage, response: ServerResponse) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      if (request.method === 'GET' && (request.url === SIDECAR_PATHS.ready || request.url === SIDECAR_PATHS.health)) {
        response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(ready));
        return;
      }
      if (request.method !== 'POST' || request.url !== CHAT_PATH) {
        response.writeHead(404).end();
        return;
      }
      let stream = false;
      try {
        stream = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as { stream?: boolean }).stream === true;
      } catch {
        response.writeHead(400).end();
        return;
      }
      if (!stream) {
        response.writeHead(200, { 'content-type': 'application/json' }).end(json);
        return;
      }
      response.writeHead(200, SSE_HEADERS);
      for (const event of events) response.write(event);
      response.end();
    });
  });
  const port = await freePort();
  await new Promise<void>((resolveListen) => server.listen(port, '127.0.0.1', resolveListen));
  return `http://127.0.0.1:${port}`;
}

/**
 * Runs the instant upstream in its own process (this file with --serve-instant-upstream), so it never
 * competes with the load generator's event loop and its latency is a fair baseline.
 */
async function startInstantUpstream(): Promise<{ url: string; close: () => Promise<void> }> {
  const upstream = spawnNode({
    name: 'the instant upstream',
    args: ['--import', 'tsx', fileURLToPath(import.meta.url), UPSTREAM_FLAG],
    // Its stdin is a pipe from this process: when the bench dies, however it dies, the upstream follows.
    stdinPipe: true,
    onLine: (line, stream) => {
      if (stream === 'stderr') console.error(line);
    },
  });
  const close = async () => {
    await upstream.stop({ graceMs: 5_000 });
  };
  try {
    const url = await waitForLine(
      upstream,
      (line, stream) => (stream === 'stdout' && line.startsWith('http://') ? line.trim() : undefined),
      {
        timeoutMs: 60_000,
        what: 'its URL',
      },
    );
    return { url, close };
  } catch (error) {
    await close();
    throw error;
  }
}

// ─── The edge: wrangler dev, or Miniflare on the deployed bundle ─────────────────

type Runner = 'miniflare' | 'wrangler';

interface EdgeInstance {
  url: string;
  /** Whether the usage ledger's queue and database are bound. */
  ledger: boolean;
  adminSecret: string;
  stop: () => Promise<void>;
}

/** What the edge needs to reach the upstream: one registry entry and the HMAC secret. */
interface EdgeTarget {
  sidecarUrl: string;
  sidecarSecret: string;
}

function edgeBindings(target: EdgeTarget, adminSecret: string): { vars: Record<string, string>; secrets: Record<string, string> } {
  const registry = [{ region: 'bench', url: target.sidecarUrl, models: MODELS, lat: 48.86, lon: 2.35, continent: 'EU' }];
  return {
    vars: { SIDECARS: JSON.stringify(registry) },
    secrets: { [ENV.sidecarSecret]: target.sidecarSecret, [ENV.adminSecret]: adminSecret },
  };
}

/** Runs a node script to completion, failing with its output. */
async function runToCompletion(name: string, args: string[]): Promise<void> {
  const child = spawnNode({ name, args, env: { WRANGLER_SEND_METRICS: 'false' } });
  const code = await child.exited;
  if (code !== 0) throw await child.failure(`failed (code ${code})`);
}

/** `wrangler dev` (what `npm start` runs) on a free port with a throwaway state folder. */
async function startWranglerEdge(target: EdgeTarget): Promise<EdgeInstance> {
  const adminSecret = crypto.randomUUID();
  const port = await freePort();
  const persistTo = await mkdtemp(join(tmpdir(), 'sirocco-bench-edge-'));
  let wrangler: ManagedProcess | undefined;
  const stop = async () => {
    await wrangler?.stop({ graceMs: 5_000 });
    await rm(persistTo, { recursive: true, force: true });
  };
  const url = `http://127.0.0.1:${port}`;
  try {
    await applyLocalD1Migrations({ persistTo });
    wrangler = await spawnWranglerDev({ port, persistTo, logLevel: 'error', ...edgeBindings(target, adminSecret) });
    await waitUntilReady(wrangler, `${url}/health`, { timeoutMs: 120_000 });
  } catch (error) {
    await stop();
    throw error;
  }
  return { url, ledger: true, adminSecret, stop };
}

/**
 * The bundle `wrangler deploy` would upload, served by Miniflare (workerd) with the bindings of
 * wrangler.toml: the worker as it runs in production, without wrangler dev's proxy in front.
 */
async function startMiniflareEdge(target: EdgeTarget, ledger: boolean): Promise<EdgeInstance> {
  const adminSecret = crypto.randomUUID();
  const outdir = await mkdtemp(join(tmpdir(), 'sirocco-bench-bundle-'));
  try {
    await runToCompletion('wrangler deploy --dry-run', [WRANGLER_BIN, 'deploy', '--dry-run', '--outdir', outdir]);
    const { unstable_getMiniflareWorkerOptions } = await import('wrangler');
    const { workerOptions } = unstable_getMiniflareWorkerOptions(join(REPO_ROOT, 'wrangler.toml'));
    const { queueProducers, queueConsumers, d1Databases, ...withoutLedger } = workerOptions;
    // With the ledger: its D1 database where `wrangler d1 migrations apply --local` puts it (wrangler's layout).
    if (ledger) await applyLocalD1Migrations({ persistTo: outdir });
    const ledgerOptions = ledger ? { queueProducers, queueConsumers, d1Databases, d1Persist: join(outdir, 'v3', 'd1') } : {};
    const { vars, secrets } = edgeBindings(target, adminSecret);
    const miniflare = new Miniflare({
      ...withoutLedger,
      ...ledgerOptions,
      modules: true,
      scriptPath: join(outdir, 'index.js'),
      modulesRoot: outdir,
      bindings: { ...workerOptions.bindings, ...vars, ...secrets },
      host: '127.0.0.1',
      port: await freePort(),
      kvPersist: false,
      durableObjectsPersist: false,
      cachePersist: false,
      // The worker still writes its access log (as in production); the bench just does not print it.
      handleStructuredLogs: () => undefined,
      handleRuntimeStdio: (stdout: Readable, stderr: Readable) => {
        stdout.resume();
        stderr.resume();
      },
    } as MiniflareOptions);
    const url = (await miniflare.ready).origin;
    return {
      url,
      ledger,
      adminSecret,
      stop: async () => {
        await miniflare.dispose();
        await rm(outdir, { recursive: true, force: true });
      },
    };
  } catch (error) {
    await rm(outdir, { recursive: true, force: true });
    throw error;
  }
}

const startEdge = (runner: Runner, target: EdgeTarget, ledger: boolean) =>
  runner === 'wrangler' ? startWranglerEdge(target) : startMiniflareEdge(target, ledger);

/**
 * A key with limits far above what the bench sends, so no request is rate limited; `capped`: with a monthly spend
 * cap it never reaches, so each request reserves and settles its cost in the key's SpendLimiter.
 */
async function createBenchKey(edgeUrl: string, adminSecret: string, capped = false): Promise<string> {
  const response = await fetch(`${edgeUrl}/admin/keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminSecret}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      tenant: capped ? 'bench-capped' : 'bench',
      rpm: 100_000_000,
      tpm: 2_000_000_000,
      ...(capped ? { spend_cap_month_micros: 1_000_000_000_000 } : {}),
    }),
  });
  if (response.status !== 201) throw new Error(`POST /admin/keys answered ${response.status}: ${await response.text()}`);
  return ((await response.json()) as { key: string }).key;
}

// ─── Measuring ────────────────────────────────────────────────────────────────

export interface RunStats {
  requests: number;
  requestsPerSecond: number;
  ttfbP50Ms: number;
  ttfbP99Ms: number;
  non2xx: number;
  errors: number;
}

/** One autocannon run, recording each request's time to first byte. */
async function measure(
  url: string,
  headers: Record<string, string>,
  body: string,
  connections: number,
  duration: number,
): Promise<RunStats> {
  const ttfb: number[] = [];
  const result = await autocannon({
    url,
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body,
    connections,
    duration,
    setupClient(client) {
      client.on('headers', () => {
        const sent = client.pipelinedRequests.peek()?.startTime;
        if (!sent) return;
        const [seconds, nanoseconds] = process.hrtime(sent);
        ttfb.push(seconds * 1e3 + nanoseconds / 1e6);
      });
    },
  });
  return {
    requests: ttfb.length,
    requestsPerSecond: Math.round(result.requests.average),
    // No request answered: NaN, which the table prints as such and the JSON report as null.
    ttfbP50Ms: round(percentile(ttfb, 50) ?? Number.NaN),
    ttfbP99Ms: round(percentile(ttfb, 99) ?? Number.NaN),
    non2xx: result.non2xx,
    errors: result.errors + result.timeouts,
  };
}

const round = (value: number) => roundTo(value, 3);

// ─── The bench ────────────────────────────────────────────────────────────────

/** What the edge forwards to, and how to call it directly for the baseline. */
interface Upstream {
  mode: 'instant' | 'demo';
  target: EdgeTarget;
  /** Headers a direct call needs (the sidecar's HMAC signature; fresh per run, within its 60 s skew). */
  directHeaders: (body: string) => Promise<Record<string, string>>;
  stop: () => Promise<void>;
}

async function startUpstream(mode: Upstream['mode']): Promise<Upstream> {
  if (mode === 'instant') {
    const upstream = await startInstantUpstream();
    return {
      mode,
      target: { sidecarUrl: upstream.url, sidecarSecret: crypto.randomUUID() },
      directHeaders: async () => ({}),
      stop: upstream.close,
    };
  }
  // The real engine: `sirocco dev`'s orchestration, one region (its own wrangler dev is left idle).
  const stack = await startStack({
    edgePort: await freePort(),
    sidecars: [{ region: 'eu-west', port: await freePort(), lat: 48.86, lon: 2.35, continent: 'EU' }],
    onProgress: (message) => console.error(`bench: ${message}`),
  });
  const target = { sidecarUrl: stack.sidecars[0]!.url, sidecarSecret: stack.sidecarSecret };
  return {
    mode,
    target,
    directHeaders: async (body) => ({ ...(await signRequest({ secret: target.sidecarSecret, method: 'POST', path: CHAT_PATH, body })) }),
    stop: stack.stop,
  };
}

interface Row {
  runner: Runner;
  /** The usage ledger bound (on) or not (off). */
  ledger: 'on' | 'off';
  scenario: string;
  clients: number;
  direct?: RunStats;
  edge: RunStats;
  addedP50Ms?: number;
  addedP99Ms?: number;
}

function chatBody(request: Partial<ChatCompletionRequest>): string {
  return JSON.stringify({
    model: 'mistral-tiny',
    max_tokens: 8,
    messages: [{ role: 'user', content: 'Which wind blows from the Sahara?' }],
    ...request,
  });
}

function printTable(rows: Row[], mode: string, duration: number): void {
  const header = [
    'edge runner',
    'ledger',
    'scenario',
    'clients',
    'direct p50',
    'edge p50',
    'added p50',
    'direct p99',
    'edge p99',
    'added p99',
    'edge req/s',
  ];
  const ms = (value: number | undefined) => (value === undefined ? '–' : `${value.toFixed(2)} ms`);
  const lines = rows.map((row) => [
    row.runner === 'wrangler' ? 'wrangler dev' : 'miniflare',
    row.ledger,
    row.scenario,
    String(row.clients),
    ms(row.direct?.ttfbP50Ms),
    ms(row.edge.ttfbP50Ms),
    ms(row.addedP50Ms),
    ms(row.direct?.ttfbP99Ms),
    ms(row.edge.ttfbP99Ms),
    ms(row.addedP99Ms),
    String(row.edge.requestsPerSecond),
  ]);
  const widths = header.map((title, column) => Math.max(title.length, ...lines.map((line) => line[column]!.length)));
  const format = (cells: string[]) =>
    cells.map((cell, column) => (column < 3 ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!))).join('  ');
  const load = loadavg()
    .map((value) => value.toFixed(1))
    .join(' ');
  console.log(
    `\nEdge overhead, time to first byte (upstream: ${mode}, ${duration} s per run, ${cpus().length} CPUs, load average ${load})\n`,
  );
  console.log(format(header));
  console.log(widths.map((width) => '─'.repeat(width)).join('  '));
  for (const line of lines) console.log(format(line));
}

/** Every measurement against one edge instance: uncached JSON and SSE at 1 and 32 clients, then cached answers. */
async function benchEdge(runner: Runner, ledger: boolean, upstream: Upstream, duration: number, problems: string[]): Promise<Row[]> {
  const edge = await startEdge(runner, upstream.target, ledger);
  const ledgerColumn = edge.ledger ? 'on' : 'off';
  const rows: Row[] = [];
  try {
    const apiKey = await createBenchKey(edge.url, edge.adminSecret);
    const edgeUrl = `${edge.url}${CHAT_PATH}`;
    const directUrl = `${upstream.target.sidecarUrl}${CHAT_PATH}`;
    const auth = { authorization: `Bearer ${apiKey}` };
    // Sampled requests (temperature 0.7) are never cached: every one goes through to the upstream.
    const scenarios = [
      { scenario: 'chat (JSON)', body: chatBody({ temperature: 0.7 }) },
      { scenario: 'chat (SSE)', body: chatBody({ temperature: 0.7, stream: true }) },
    ];
    // Warm both paths (workerd compiles, the first outbound connection is slow), results discarded.
    for (const { body } of scenarios) {
      await measure(edgeUrl, auth, body, 4, 1);
      await measure(directUrl, await upstream.directHeaders(body), body, 4, 1);
    }
    for (const clients of [1, 32]) {
      for (const { scenario, body } of scenarios) {
        console.error(`bench: ${runner}, ledger ${ledgerColumn}, ${scenario}, ${clients} client(s)…`);
        const direct = await measure(directUrl, await upstream.directHeaders(body), body, clients, duration);
        const edgeStats = await measure(edgeUrl, auth, body, clients, duration);
        rows.push({
          runner,
          ledger: ledgerColumn,
          scenario,
          clients,
          direct,
          edge: edgeStats,
          addedP50Ms: round(edgeStats.ttfbP50Ms - direct.ttfbP50Ms),
          addedP99Ms: round(edgeStats.ttfbP99Ms - direct.ttfbP99Ms),
        });
      }
    }

    // A capped key adds the spend reservation (one Durable Object call) before the request is forwarded.
    if (edge.ledger) {
      const cappedAuth = { authorization: `Bearer ${await createBenchKey(edge.url, edge.adminSecret, true)}` };
      const body = chatBody({ temperature: 0.7 });
      await measure(edgeUrl, cappedAuth, body, 4, 1);
      console.error(`bench: ${runner}, ledger ${ledgerColumn}, chat (JSON) with a spend cap, 1 client…`);
      const direct = await measure(directUrl, await upstream.directHeaders(body), body, 1, duration);
      const capped = await measure(edgeUrl, cappedAuth, body, 1, duration);
      rows.push({
        runner,
        ledger: ledgerColumn,
        scenario: 'chat (JSON), capped key',
        clients: 1,
        direct,
        edge: capped,
        addedP50Ms: round(capped.ttfbP50Ms - direct.ttfbP50Ms),
        addedP99Ms: round(capped.ttfbP99Ms - direct.ttfbP99Ms),
      });
    }

    // Cached answers: one deterministic request fills the cache, then every request is a HIT.
    const cachedBody = chatBody({ temperature: 0 });
    const post = () => fetch(edgeUrl, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: cachedBody });
    await (await post()).text();
    const check = await post();
    await check.text();
    if (check.headers.get('x-cache') === 'HIT') {
      for (const clients of [1, 32]) {
        console.error(`bench: ${runner}, cached answer, ${clients} client(s)…`);
        rows.push({
          runner,
          ledger: ledgerColumn,
          scenario: 'cached (HIT)',
          clients,
          edge: await measure(edgeUrl, auth, cachedBody, clients, duration),
        });
      }
    } else {
      problems.push(
        `${runner}: no cache HIT on a repeated deterministic request (x-cache: ${check.headers.get('x-cache')}): cached throughput not measured`,
      );
    }
    if (edge.ledger) {
      const recorded = await ledgerRequests(edge);
      if (recorded === 0) problems.push(`${runner}: the usage ledger recorded no request (is its queue consumer running?)`);
      else console.error(`bench: ${runner}: the usage ledger holds ${recorded} requests`);
    }
  } finally {
    await edge.stop();
  }
  return rows;
}

/** Requests the edge's ledger holds once its queue has delivered (batches wait up to 5 s); 0 if none within 20 s. */
async function ledgerRequests(edge: EdgeInstance): Promise<number> {
  const deadline = Date.now() + 20_000;
  let recorded = 0;
  for (;;) {
    const response = await fetch(`${edge.url}/admin/usage?group_by=tenant`, { headers: { authorization: `Bearer ${edge.adminSecret}` } });
    const report = (await response.json()) as { data?: { requests: number }[] };
    const now = (report.data ?? []).reduce((sum, row) => sum + row.requests, 0);
    if ((now > 0 && now === recorded) || Date.now() > deadline) return now;
    recorded = now;
    await new Promise((resolveWait) => setTimeout(resolveWait, 6_000));
  }
}

export async function runEdgeBench(argv: string[]): Promise<number> {
  const { values } = parseCommandArgs(argv, {
    upstream: { type: 'string', default: 'instant' },
    runner: { type: 'string', default: 'both' },
    duration: { type: 'string', default: '5' },
    ledger: { type: 'string', default: 'both' },
    out: { type: 'string', default: join(REPO_ROOT, 'bench/results/edge.json') },
  });
  if (values.upstream !== 'instant' && values.upstream !== 'demo')
    throw new CliError(`--upstream must be "instant" or "demo", got "${values.upstream}"`);
  const runners: Runner[] =
    values.runner === 'both'
      ? ['miniflare', 'wrangler']
      : values.runner === 'miniflare' || values.runner === 'wrangler'
        ? [values.runner]
        : [];
  if (runners.length === 0) throw new CliError(`--runner must be "miniflare", "wrangler" or "both", got "${values.runner}"`);
  const duration = parseNumberOption(values.duration, 'duration', { integer: true, min: 1, max: 600 })!;
  const ledgerModes = values.ledger === 'both' ? [true, false] : values.ledger === 'on' ? [true] : values.ledger === 'off' ? [false] : [];
  if (ledgerModes.length === 0) throw new CliError(`--ledger must be "on", "off" or "both", got "${values.ledger}"`);
  if (values.ledger === 'off' && runners.includes('wrangler')) {
    throw new CliError('--ledger off needs --runner miniflare: wrangler dev always binds what wrangler.toml names');
  }

  console.error(`bench: starting the ${values.upstream} upstream…`);
  const upstream = await startUpstream(values.upstream);
  const rows: Row[] = [];
  const problems: string[] = [];
  try {
    for (const runner of runners) {
      for (const ledger of runner === 'wrangler' ? [true] : ledgerModes)
        rows.push(...(await benchEdge(runner, ledger, upstream, duration, problems)));
    }
  } finally {
    await upstream.stop();
  }

  printTable(rows, upstream.mode, duration);
  for (const row of rows) {
    const bad = row.edge.non2xx + row.edge.errors + (row.direct ? row.direct.non2xx + row.direct.errors : 0);
    if (bad > 0) problems.push(`${row.scenario} × ${row.clients}: ${bad} non-2xx responses or errors`);
  }
  for (const problem of problems) console.log(`warning: ${problem}`);
  // The target is the worker's own cost: judged on the production-like runner when it ran.
  const judged = runners.includes('miniflare') ? 'miniflare' : 'wrangler';
  // With the ledger when it ran: the edge as deployed.
  const judgedLedger = rows.some((row) => row.runner === judged && row.ledger === 'on') ? 'on' : 'off';
  const singleClient = rows.filter(
    (row) => row.runner === judged && row.ledger === judgedLedger && row.clients === 1 && row.addedP50Ms !== undefined,
  );
  const worstAddedP50 = Math.max(...singleClient.map((row) => row.addedP50Ms!));
  const meetsTarget = worstAddedP50 <= TARGET_ADDED_P50_MS;
  console.log(
    `\nadded p50 at 1 client (${judged}): ${worstAddedP50.toFixed(2)} ms (target ≤ ${TARGET_ADDED_P50_MS} ms: ${meetsTarget ? 'met' : 'NOT met'})`,
  );

  const report = {
    bench: 'edge',
    date: new Date().toISOString(),
    upstream: upstream.mode,
    durationSecondsPerRun: duration,
    machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', node: process.version, loadAverage: loadavg() },
    metric: 'time to first byte (ms), nearest-rank percentiles over every request of a run',
    target: { addedP50Ms: TARGET_ADDED_P50_MS, judgedOn: judged, worstAddedP50AtOneClientMs: worstAddedP50, met: meetsTarget },
    problems,
    rows,
  };
  await mkdir(dirname(values.out), { recursive: true });
  await writeFile(values.out, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`wrote ${values.out}`);
  return problems.length > 0 ? 1 : 0;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url) && process.argv[2] === UPSTREAM_FLAG) {
  serveInstantUpstream('bench').then((url) => console.log(url));
  process.stdin.on('end', () => process.exit(0)).resume();
} else if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  // Ctrl-C or a timeout: exit through process.on('exit') handlers, which stop the children.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(130));
  runEdgeBench(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (error: unknown) => {
      console.error(error instanceof CliError ? `bench:edge: ${error.message}` : error);
      process.exit(1);
    },
  );
}
