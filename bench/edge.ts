/**
 * `npm run bench:edge`: what the edge adds to a request, and how fast it serves cached answers.
 *
 * Real processes: `wrangler dev` runs the worker (auth, rate-limit Durable Object, validation,
 * cache, routing, HMAC signing, streaming) in front of an upstream, and autocannon drives both the
 * edge and the upstream directly with the same chat request. The difference is the edge's cost.
 *
 *   --upstream instant   (default) a minimal Mistral-compatible server that answers at once, so the
 *                        figures are pure edge overhead — what the ≤ 2 ms p50 target is about;
 *   --upstream demo      the real stack from `sirocco dev` (two `sirocco serve` sidecars on the demo
 *                        models); the direct baseline calls one sidecar, signed like the edge does.
 *   --duration <s>       seconds per measurement (default 5); --out <file> (default bench/results/edge.json).
 *
 * Latency is time to first byte: from the request leaving autocannon to the response headers (for
 * the edge that is after the first upstream chunk, since it commits the status only then), measured
 * per request in float milliseconds. Percentiles are nearest-rank over every request of a run.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CliError, parseCommandArgs, parseNumberOption } from '../cli/args.ts';
import { freePort, startStack } from '../cli/commands/dev.ts';
import type { ChatCompletionRequest } from '../shared/api.ts';
import { ENV, SIDECAR_PATHS, type LoadReport } from '../shared/protocol.ts';
import { signRequest } from '../shared/signing.ts';
import { encodeSseData, SSE_DONE, SSE_HEADERS } from '../shared/sse.ts';

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const WRANGLER_BIN = join(REPO_ROOT, 'node_modules/wrangler/bin/wrangler.js');
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
  const ready: LoadReport = { ready: true, region, models: MODELS, queueDepth: 0, activeSequences: 0, maxBatch: 64, maxQueue: 1024, tokensPerSecond: 0 };
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
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), UPSTREAM_FLAG], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const close = async () => {
    if (child.exitCode !== null) return;
    const exited = new Promise((resolveExit) => child.once('exit', resolveExit));
    child.kill('SIGTERM');
    await exited;
  };
  const url = await new Promise<string>((resolveUrl, reject) => {
    let output = '';
    child.stdout!.on('data', (data: Buffer) => {
      output += data.toString('utf8');
      const line = output.split('\n').find((candidate) => candidate.startsWith('http://'));
      if (line) resolveUrl(line.trim());
    });
    child.once('exit', (code) => reject(new Error(`the instant upstream exited (code ${code}) before listening`)));
  });
  return { url, close };
}

// ─── The edge under wrangler dev ──────────────────────────────────────────────

async function waitForHealth(url: string, child: ChildProcess, output: () => string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`wrangler dev exited during start-up:\n${output()}`);
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(2_000) });
      await response.body?.cancel();
      if (response.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolveWait) => setTimeout(resolveWait, 250));
  }
  throw new Error(`wrangler dev was not ready at ${url} after ${timeoutMs / 1000} s:\n${output()}`);
}

/** `wrangler dev` on a free port with one sidecar (the upstream) in its registry and a throwaway state folder. */
async function startEdge(upstreamUrl: string, secrets: { sidecar: string; admin: string }) {
  const port = await freePort();
  const persistTo = await mkdtemp(join(tmpdir(), 'sirocco-bench-edge-'));
  const registry = [{ region: 'bench', url: upstreamUrl, models: MODELS, lat: 48.86, lon: 2.35, continent: 'EU' }];
  const args = [WRANGLER_BIN, 'dev', '--port', String(port), '--ip', '127.0.0.1', '--persist-to', persistTo];
  args.push('--show-interactive-dev-session=false', '--log-level', 'error');
  args.push('--var', `${ENV.sidecarSecret}:${secrets.sidecar}`, '--var', `${ENV.adminSecret}:${secrets.admin}`);
  args.push('--var', `SIDECARS:${JSON.stringify(registry)}`);
  const child = spawn(process.execPath, args, { cwd: REPO_ROOT, detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, WRANGLER_SEND_METRICS: 'false' } });
  let output = '';
  const keep = (data: Buffer) => (output = (output + data.toString('utf8')).slice(-4_000));
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const stop = async () => {
    if (child.exitCode === null && child.pid !== undefined) {
      const exited = new Promise((resolveExit) => child.once('exit', resolveExit));
      try {
        process.kill(-child.pid, 'SIGTERM'); // the whole group: wrangler and its workerd
      } catch {
        // already gone
      }
      await Promise.race([exited, new Promise((resolveWait) => setTimeout(resolveWait, 5_000))]);
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await rm(persistTo, { recursive: true, force: true });
  };
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitForHealth(`${url}/health`, child, () => output, 120_000);
  } catch (error) {
    await stop();
    throw error;
  }
  return { url, stop };
}

/** A key with limits far above what the bench sends, so no request is rate limited. */
async function createBenchKey(edgeUrl: string, adminSecret: string): Promise<string> {
  const response = await fetch(`${edgeUrl}/admin/keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminSecret}`, 'content-type': 'application/json' },
    body: JSON.stringify({ tenant: 'bench', rpm: 100_000_000, tpm: 2_000_000_000 }),
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

/** Nearest-rank percentile of ascending `sorted`. */
function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/** One autocannon run, recording each request's time to first byte. */
async function measure(url: string, headers: Record<string, string>, body: string, connections: number, duration: number): Promise<RunStats> {
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
  ttfb.sort((a, b) => a - b);
  return {
    requests: ttfb.length,
    requestsPerSecond: Math.round(result.requests.average),
    ttfbP50Ms: round(percentile(ttfb, 50)),
    ttfbP99Ms: round(percentile(ttfb, 99)),
    non2xx: result.non2xx,
    errors: result.errors + result.timeouts,
  };
}

const round = (value: number) => Math.round(value * 1000) / 1000;

// ─── The bench ────────────────────────────────────────────────────────────────

interface Upstream {
  mode: 'instant' | 'demo';
  edgeUrl: string;
  apiKey: string;
  /** The upstream the edge forwards to, called directly for the baseline. */
  directUrl: string;
  /** Headers a direct call needs (the sidecar's HMAC signature, refreshed per run). */
  directHeaders: (body: string) => Promise<Record<string, string>>;
  stop: () => Promise<void>;
}

async function startInstant(): Promise<Upstream> {
  const secrets = { sidecar: crypto.randomUUID(), admin: crypto.randomUUID() };
  const upstream = await startInstantUpstream();
  try {
    const edge = await startEdge(upstream.url, secrets);
    try {
      const apiKey = await createBenchKey(edge.url, secrets.admin);
      return {
        mode: 'instant',
        edgeUrl: edge.url,
        apiKey,
        directUrl: upstream.url,
        directHeaders: async () => ({}),
        stop: async () => {
          await edge.stop();
          await upstream.close();
        },
      };
    } catch (error) {
      await edge.stop();
      throw error;
    }
  } catch (error) {
    await upstream.close();
    throw error;
  }
}

async function startDemo(): Promise<Upstream> {
  const stack = await startStack({ edgePort: await freePort(), sidecars: [
    { region: 'eu-west', port: await freePort(), lat: 48.86, lon: 2.35, continent: 'EU' },
  ], onProgress: (message) => console.error(`bench: ${message}`) });
  try {
    const apiKey = await createBenchKey(stack.edgeUrl, stack.adminSecret);
    return {
      mode: 'demo',
      edgeUrl: stack.edgeUrl,
      apiKey,
      directUrl: stack.sidecars[0]!.url,
      directHeaders: async (body) => ({ ...(await signRequest({ secret: stack.sidecarSecret, method: 'POST', path: CHAT_PATH, body })) }),
      stop: stack.stop,
    };
  } catch (error) {
    await stack.stop();
    throw error;
  }
}

interface Row {
  scenario: string;
  clients: number;
  direct?: RunStats;
  edge: RunStats;
  addedP50Ms?: number;
  addedP99Ms?: number;
}

function chatBody(request: Partial<ChatCompletionRequest>): string {
  return JSON.stringify({ model: 'mistral-tiny', max_tokens: 8, messages: [{ role: 'user', content: 'Which wind blows from the Sahara?' }], ...request });
}

function printTable(rows: Row[], mode: string, duration: number): void {
  const header = ['scenario', 'clients', 'direct p50', 'edge p50', 'added p50', 'direct p99', 'edge p99', 'added p99', 'edge req/s'];
  const ms = (value: number | undefined) => (value === undefined ? '–' : `${value.toFixed(2)} ms`);
  const lines = rows.map((row) => [
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
  const format = (cells: string[]) => cells.map((cell, column) => (column < 1 ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!))).join('  ');
  console.log(`\nEdge overhead, time to first byte (upstream: ${mode}, ${duration} s per run, ${cpus().length} CPUs)\n`);
  console.log(format(header));
  console.log(widths.map((width) => '─'.repeat(width)).join('  '));
  for (const line of lines) console.log(format(line));
}

export async function runEdgeBench(argv: string[]): Promise<number> {
  const { values } = parseCommandArgs(argv, {
    upstream: { type: 'string', default: 'instant' },
    duration: { type: 'string', default: '5' },
    out: { type: 'string', default: join(REPO_ROOT, 'bench/results/edge.json') },
  });
  if (values.upstream !== 'instant' && values.upstream !== 'demo') throw new CliError(`--upstream must be "instant" or "demo", got "${values.upstream}"`);
  const duration = parseNumberOption(values.duration, 'duration', { integer: true, min: 1, max: 600 })!;

  console.error(`bench: starting wrangler dev in front of the ${values.upstream} upstream…`);
  const upstream = values.upstream === 'instant' ? await startInstant() : await startDemo();
  const rows: Row[] = [];
  const problems: string[] = [];
  try {
    const edgeUrl = `${upstream.edgeUrl}${CHAT_PATH}`;
    const directUrl = `${upstream.directUrl}${CHAT_PATH}`;
    const auth = { authorization: `Bearer ${upstream.apiKey}` };
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
        console.error(`bench: ${scenario}, ${clients} client(s)…`);
        const direct = await measure(directUrl, await upstream.directHeaders(body), body, clients, duration);
        const edge = await measure(edgeUrl, auth, body, clients, duration);
        rows.push({ scenario, clients, direct, edge, addedP50Ms: round(edge.ttfbP50Ms - direct.ttfbP50Ms), addedP99Ms: round(edge.ttfbP99Ms - direct.ttfbP99Ms) });
      }
    }

    // Cached answers: one deterministic request fills the cache, then every request is a HIT.
    const cachedBody = chatBody({ temperature: 0 });
    const first = await fetch(edgeUrl, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: cachedBody });
    await first.text();
    const check = await fetch(edgeUrl, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: cachedBody });
    await check.text();
    if (check.headers.get('x-cache') === 'HIT') {
      for (const clients of [1, 32]) {
        console.error(`bench: cached answer, ${clients} client(s)…`);
        rows.push({ scenario: 'cached (HIT)', clients, edge: await measure(edgeUrl, auth, cachedBody, clients, duration) });
      }
    } else {
      problems.push(`no cache HIT on a repeated deterministic request (x-cache: ${check.headers.get('x-cache')}): cached throughput not measured`);
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
  const singleClient = rows.filter((row) => row.clients === 1 && row.addedP50Ms !== undefined);
  const worstAddedP50 = Math.max(...singleClient.map((row) => row.addedP50Ms!));
  const meetsTarget = worstAddedP50 <= TARGET_ADDED_P50_MS;
  console.log(`\nadded p50 at 1 client: ${worstAddedP50.toFixed(2)} ms (target ≤ ${TARGET_ADDED_P50_MS} ms: ${meetsTarget ? 'met' : 'NOT met'})`);

  const report = {
    bench: 'edge',
    date: new Date().toISOString(),
    upstream: upstream.mode,
    durationSecondsPerRun: duration,
    machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', node: process.version },
    metric: 'time to first byte (ms), nearest-rank percentiles over every request of a run',
    target: { addedP50Ms: TARGET_ADDED_P50_MS, worstAddedP50AtOneClientMs: worstAddedP50, met: meetsTarget },
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
} else if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  runEdgeBench(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (error: unknown) => {
      console.error(error instanceof CliError ? `bench:edge: ${error.message}` : error);
      process.exit(1);
    },
  );
}
