/**
 * `sirocco dev` (what `npm start` runs): the whole stack on one machine — the demo models, two regional sidecars
 * and `wrangler dev` in front of them — plus a dev API key, until Ctrl-C.
 *
 * `startStack()` is the ONE stack orchestration in the project: the end-to-end and browser suites launch the
 * stack through it too, on free ports and a throwaway KV store, so what the tests drive is what `npm start` runs.
 * Its children are launched, awaited and stopped by cli/processes.ts, as the benches' and the tests' are.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { build } from 'esbuild';
import { DEFAULT_PORTS, ENV, SIDECAR_PATHS } from '../../shared/protocol.ts';
import { CliError, parseCommandArgs } from '../args.ts';
import { describeMigrationsLine, describeSidecarLine, describeWranglerLine } from '../dev-console.ts';
import { checkDevEnvironment } from '../dev-environment.ts';
import { devVarsFile, readDevVars, writeDevVars } from '../dev-vars.ts';
import { fetchText, type TextAnswer } from '../http.ts';
import {
  applyLocalD1Migrations,
  freePort,
  isPortFree,
  type ManagedProcess,
  ProcessError,
  REPO_ROOT,
  spawnSidecar,
  spawnWranglerDev,
  waitUntilReady,
} from '../processes.ts';

export const summary = 'run the whole stack locally (demo model, two sidecars, wrangler dev); PORT or --port sets the edge port';

// ─── The pages' generated assets ─────────────────────────────────────────────

/** One browser ES module from `entry` and what it imports, with `banner` as its first line. */
async function bundleBrowserModule(entry: string, banner: string, minify: boolean): Promise<string> {
  const result = await build({
    entryPoints: [entry],
    bundle: true,
    minify,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    write: false,
    legalComments: 'none',
    banner: { js: `// ${banner}` },
  });
  return result.outputFiles[0]!.text;
}

/** The notice on a library copied from node_modules: name, installed version, licence. */
async function vendorNotice(packageDir: string, name: string, licence: string): Promise<string> {
  const { version } = JSON.parse(await readFile(join(packageDir, 'package.json'), 'utf8')) as { version: string };
  return `${name} ${version} (${licence}), copied from node_modules by \`sirocco dev\` (cli/commands/dev.ts). Do not edit.`;
}

/** The browser copy of shared/sse.ts, served by the worker's static assets next to the chat page. */
export const PAGE_SSE_MODULE = join(REPO_ROOT, 'edge/public/sse.js');

/** Bundles shared/sse.ts (and its eventsource-parser dependency) into one browser ES module. */
export function bundlePageSseModule(): Promise<string> {
  return bundleBrowserModule(
    join(REPO_ROOT, 'shared/sse.ts'),
    'Generated from shared/sse.ts by `sirocco dev` (cli/commands/dev.ts). Do not edit.',
    false,
  );
}

const UPLOT_PACKAGE = join(REPO_ROOT, 'node_modules/uplot');
/** The operator console's chart library (uPlot) and its stylesheet, copied from node_modules. */
export const PAGE_CHART_MODULE = join(REPO_ROOT, 'edge/public/vendor/uplot.js');
export const PAGE_CHART_STYLES = join(REPO_ROOT, 'edge/public/vendor/uplot.css');
const uplotNotice = () => vendorNotice(UPLOT_PACKAGE, 'uPlot', 'MIT licence, (c) Leon Sorokin');

/** uPlot's ES module, minified (its dist file is unminified). */
export async function bundlePageChartModule(): Promise<string> {
  return bundleBrowserModule(join(UPLOT_PACKAGE, 'dist/uPlot.esm.js'), await uplotNotice(), true);
}

export async function pageChartStyles(): Promise<string> {
  return `/* ${await uplotNotice()} */\n${await readFile(join(UPLOT_PACKAGE, 'dist/uPlot.min.css'), 'utf8')}\n`;
}

const MARKDOWN_PACKAGE = join(REPO_ROOT, 'node_modules/markdown-it');
/** The chat page's Markdown renderer (markdown-it), copied from node_modules. */
export const PAGE_MARKDOWN_MODULE = join(REPO_ROOT, 'edge/public/vendor/markdown-it.js');

/** markdown-it's browser ES module with its dependencies, minified. */
export async function bundlePageMarkdownModule(): Promise<string> {
  const notice = await vendorNotice(MARKDOWN_PACKAGE, 'markdown-it', 'MIT licence, (c) Vitaly Puzrin, Alex Kocharin');
  return bundleBrowserModule(join(MARKDOWN_PACKAGE, 'dist/markdown-it.mjs'), notice, true);
}

/** The files under edge/public generated from other sources; committed, so `wrangler deploy` ships them. */
export const GENERATED_PAGE_ASSETS: ReadonlyArray<{ path: string; generate: () => Promise<string> }> = [
  { path: PAGE_SSE_MODULE, generate: bundlePageSseModule },
  { path: PAGE_CHART_MODULE, generate: bundlePageChartModule },
  { path: PAGE_CHART_STYLES, generate: pageChartStyles },
  { path: PAGE_MARKDOWN_MODULE, generate: bundlePageMarkdownModule },
];

/**
 * Rewrites each generated page asset whose source changed (so the chat page never parses SSE differently from the
 * tiers, and the console runs the installed uPlot); returns the paths rewritten.
 */
export async function refreshPageAssets(): Promise<string[]> {
  const rewritten: string[] = [];
  for (const asset of GENERATED_PAGE_ASSETS) {
    const fresh = await asset.generate();
    const current = await readFile(asset.path, 'utf8').catch(() => null);
    if (current === fresh) continue;
    await mkdir(dirname(asset.path), { recursive: true });
    await writeFile(asset.path, fresh);
    rewritten.push(asset.path);
  }
  return rewritten;
}

// ─── Ports and interruption ──────────────────────────────────────────────────

async function assertPortFree(port: number, what: string, hint: string): Promise<void> {
  if (!(await isPortFree(port))) {
    throw new CliError(`port ${port} (${what}) is already in use — stop whatever listens there or ${hint}`, 1);
  }
}

function throwIfInterrupted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw interruptedError();
}

function interruptedError(): CliError {
  return new CliError('interrupted while starting; everything started was stopped', 130);
}

// ─── The stack ───────────────────────────────────────────────────────────────

/** The edge's process name in errors and in `onLog`. */
export const WRANGLER_NAME = 'wrangler dev';
/** The local D1 migrations' process name in `onLog`. */
export const MIGRATIONS_NAME = 'wrangler d1 migrations apply';

export interface SidecarSpec {
  region: string;
  port: number;
  lat: number;
  lon: number;
  continent: string;
}

/** Where the two demo regions sit, for the edge's nearest-region routing. */
export const DEFAULT_SIDECARS: SidecarSpec[] = [
  { region: 'eu-west', port: 8081, lat: 48.86, lon: 2.35, continent: 'EU' },
  { region: 'us-east', port: 8082, lat: 39.04, lon: -77.49, continent: 'NA' },
];

export interface StackOptions {
  /** Edge port (default PORT or 8787). */
  edgePort?: number;
  sidecars?: SidecarSpec[];
  /** The dev API key's value (default SIROCCO_DEV_KEY, else random). */
  devKey?: string;
  /** Local KV/Durable Object/D1 state for wrangler; default a fresh temp folder removed on stop. */
  persistTo?: string;
  /** onnxruntime threads per sidecar. */
  sidecarThreads?: number;
  /** Extra wrangler vars for the edge (tunables such as STREAM_IDLE_TIMEOUT_MS). */
  edgeVars?: Record<string, string>;
  /** Every line the children print, prefixed with their name. */
  onLog?: (name: string, line: string) => void;
  /** Progress messages of the launcher itself. */
  onProgress?: (message: string) => void;
  /** Aborts a start in progress (Ctrl-C while models load): everything started so far is stopped. */
  signal?: AbortSignal;
  /**
   * A dotenv file (`npm start`: the repository's .dev.vars) that keeps the generated admin and sidecar secrets and
   * dev key across starts: values the environment does not set are read from it, and generated ones written to it.
   * Without it every start generates fresh ones (the tests' throwaway stacks).
   */
  devVarsFile?: string;
}

export interface Stack {
  /** e.g. http://localhost:8787 (no trailing slash, no /v1). */
  edgeUrl: string;
  apiKey: string;
  adminSecret: string;
  /** The HMAC secret the edge signs sidecar requests with (tests use it to query a sidecar directly). */
  sidecarSecret: string;
  sidecars: Array<SidecarSpec & { url: string }>;
  /**
   * Resolves with a description when the edge (wrangler dev) exits on its own: the stack cannot go on. A sidecar
   * that dies is restarted instead (see SupervisedSidecar), so one region's crash never stops the others.
   */
  edgeExit: Promise<string>;
  /** The running process of a region's sidecar (its pid changes on every restart) and how often it was restarted. */
  sidecarProcess(region: string): { pid: number | undefined; restarts: number };
  /** Stops one sidecar for good: it is not restarted (e.g. to test failover). */
  stopSidecar(region: string): Promise<void>;
  /** Stops everything and removes the temp state; safe to call twice. */
  stop(): Promise<void>;
}

export async function startStack(options: StackOptions = {}): Promise<Stack> {
  const edgePort = options.edgePort ?? DEFAULT_PORTS.edge;
  const specs = options.sidecars ?? DEFAULT_SIDECARS;
  const progress = options.onProgress ?? (() => {});
  const onLog = options.onLog ?? (() => {});

  await assertPortFree(edgePort, 'edge', 'set PORT to another port');
  for (const spec of specs) await assertPortFree(spec.port, `${spec.region} sidecar`, 'choose others with --sidecar-ports');

  const { sidecarSecret, adminSecret, apiKey } = await devCredentials(options, progress);

  for (const path of await refreshPageAssets()) progress(`rebuilt ${relative(REPO_ROOT, path)}`);
  progress('preparing the demo models (built once, then reused)…');
  // Loaded lazily: the engine (onnxruntime) is only needed when a stack really starts.
  const { ensureDemoModels } = await import('../../sidecar/convert/demo-model.ts');
  const models = await ensureDemoModels();
  throwIfInterrupted(options.signal);

  const ownPersist = options.persistTo === undefined;
  const persistTo = options.persistTo ?? (await mkdtemp(join(tmpdir(), 'sirocco-wrangler-')));
  const children: ManagedProcess[] = [];
  const supervised: SupervisedSidecar[] = [];
  const stopAll = async () => {
    await Promise.all([...supervised.map((sidecar) => sidecar.stop()), ...children.map((child) => child.stop({ graceMs: 15_000 }))]);
    if (ownPersist) await rm(persistTo, { recursive: true, force: true });
  };

  try {
    const sidecars = specs.map((spec) => {
      const name = `sidecar ${spec.region}`;
      const serveArgs = [
        '--model',
        `${models['mistral-tiny']},${models['mistral-small']}`,
        '--region',
        spec.region,
        '--port',
        String(spec.port),
      ];
      if (options.sidecarThreads) serveArgs.push('--threads', String(options.sidecarThreads));
      // The secret travels in the environment, never on the command line (where `ps` shows it to every user).
      const spawn = () =>
        spawnSidecar({
          name,
          serveArgs,
          env: { [ENV.sidecarSecret]: sidecarSecret },
          ownProcessGroup: true,
          onLine: (line) => onLog(name, line),
        });
      const child = spawn();
      children.push(child);
      return { ...spec, url: `http://127.0.0.1:${spec.port}`, process: child, spawn };
    });

    const registry = sidecars.map(({ region, url, lat, lon, continent }) => ({
      region,
      url,
      models: ['mistral-tiny', 'mistral-small'],
      lat,
      lon,
      continent,
    }));
    // The usage ledger's tables, in the same state folder wrangler dev serves (skips those already applied).
    progress('applying the usage ledger migrations to the local D1 database…');
    await applyLocalD1Migrations({ persistTo, onLine: (line) => onLog(MIGRATIONS_NAME, line) });
    const wrangler = await spawnWranglerDev({
      name: WRANGLER_NAME,
      port: edgePort,
      persistTo,
      // `log`, not `warn`: the worker's access-log lines (console.log) are what the console shows per request;
      // run() leaves out wrangler's own routine lines (cli/dev-console.ts).
      logLevel: 'log',
      inspectorPort: await freePort(),
      vars: { ...options.edgeVars, SIDECARS: JSON.stringify(registry) },
      // The same bindings the worker reads from `wrangler secret` in production.
      secrets: { [ENV.sidecarSecret]: sidecarSecret, [ENV.adminSecret]: adminSecret },
      onLine: (line) => onLog(WRANGLER_NAME, line),
    });
    children.push(wrangler);

    progress('waiting for the sidecars to load the models and for wrangler dev…');
    const edgeUrl = `http://localhost:${edgePort}`;
    const { signal } = options;
    await Promise.all([
      ...sidecars.map((sidecar) => waitUntilReady(sidecar.process, `${sidecar.url}${SIDECAR_PATHS.ready}`, { timeoutMs: 180_000, signal })),
      waitUntilReady(wrangler, `http://127.0.0.1:${edgePort}/health`, { timeoutMs: 120_000, signal }),
    ]);

    await createDevKey(`http://127.0.0.1:${edgePort}`, adminSecret, apiKey);

    // From here on a sidecar that dies is restarted; at start-up a death is a configuration problem and fails the start.
    for (const sidecar of sidecars) {
      children.splice(children.indexOf(sidecar.process), 1);
      supervised.push(new SupervisedSidecar(sidecar.region, sidecar.process, sidecar.spawn, progress));
    }
    const supervisorOf = (region: string): SupervisedSidecar => {
      const sidecar = supervised.find((candidate) => candidate.region === region);
      if (!sidecar) throw new Error(`no sidecar in region ${region}`);
      return sidecar;
    };
    const edgeExit = wrangler.exited.then((code) => `${wrangler.name} exited (code ${code})`);
    let stopped: Promise<void> | undefined;
    return {
      edgeUrl,
      apiKey,
      adminSecret,
      sidecarSecret,
      sidecars: sidecars.map(({ process: _process, spawn: _spawn, ...sidecar }) => sidecar),
      edgeExit,
      sidecarProcess: (region) => {
        const sidecar = supervisorOf(region);
        return { pid: sidecar.process.child.pid, restarts: sidecar.restarts };
      },
      stopSidecar: (region) => supervisorOf(region).stop(),
      stop: () => (stopped ??= stopAll()),
    };
  } catch (error) {
    await stopAll();
    if (options.signal?.aborted) throw interruptedError();
    // The CLI prints a CliError's message alone: the child's name and its last output say what went wrong.
    if (error instanceof ProcessError) throw new CliError(error.message, 1);
    throw error;
  }
}

/**
 * The stack's secrets and dev key: the option or environment first, then the dev-vars file, else generated (and
 * written to that file, so the next start reuses them: keys are hashed with the admin secret, and the dev state in
 * .wrangler/state outlives a restart).
 */
async function devCredentials(
  options: StackOptions,
  progress: (message: string) => void,
): Promise<{ sidecarSecret: string; adminSecret: string; apiKey: string }> {
  const saved = options.devVarsFile === undefined ? new Map<string, string>() : await readDevVars(options.devVarsFile);
  const generated: Record<string, string> = {};
  const pick = (name: string, given: string | undefined, generate: () => string): string => {
    if (given) return given;
    const kept = saved.get(name);
    if (kept) return kept;
    const fresh = generate();
    generated[name] = fresh;
    return fresh;
  };
  const sidecarSecret = pick(ENV.sidecarSecret, process.env[ENV.sidecarSecret], () => randomBytes(32).toString('hex'));
  const adminSecret = pick(ENV.adminSecret, process.env[ENV.adminSecret], () => randomBytes(32).toString('hex'));
  const apiKey = pick(ENV.devKey, options.devKey || process.env[ENV.devKey], () => `sk-dev-${randomBytes(16).toString('hex')}`);
  if (options.devVarsFile !== undefined) {
    if (Object.keys(generated).length > 0) {
      await writeDevVars(generated, options.devVarsFile);
      progress(`wrote ${Object.keys(generated).join(', ')} to ${options.devVarsFile} (reused on the next start)`);
    } else {
      progress(`using the secrets and dev key kept in ${options.devVarsFile}`);
    }
  }
  return { sidecarSecret, adminSecret, apiKey };
}

/** First restart delay after a sidecar dies; doubled on each death in a row, up to the maximum. */
const RESTART_DELAY_MS = 500;
const MAX_RESTART_DELAY_MS = 30_000;
/** A sidecar that ran this long before dying starts again from the first delay. */
const STABLE_RUN_MS = 60_000;

/**
 * Keeps one region's sidecar running: when it exits on its own (a crash, an OOM kill, `kill -9`) it is started again
 * after a delay that doubles while it keeps dying, so a sidecar that cannot start does not spin. The edge fails
 * over to the other regions meanwhile, and routes to this one again once its /ready answers.
 */
class SupervisedSidecar {
  restarts = 0;
  private deathsInARow = 0;
  private stopping = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly region: string,
    public process: ManagedProcess,
    private readonly spawn: () => ManagedProcess,
    private readonly progress: (message: string) => void,
  ) {
    this.watch(process, Date.now());
  }

  private watch(child: ManagedProcess, startedAt: number): void {
    void child.exited.then((code) => {
      if (this.stopping || child !== this.process) return;
      if (Date.now() - startedAt >= STABLE_RUN_MS) this.deathsInARow = 0;
      const delay = Math.min(MAX_RESTART_DELAY_MS, RESTART_DELAY_MS * 2 ** this.deathsInARow);
      this.deathsInARow += 1;
      this.progress(`${child.name} exited (${code === null ? 'killed by a signal' : `code ${code}`}); restarting it in ${delay / 1000} s`);
      this.timer = setTimeout(() => {
        if (this.stopping) return;
        this.restarts += 1;
        this.process = this.spawn();
        this.watch(this.process, Date.now());
      }, delay);
    });
  }

  /** Stops it for good. */
  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.timer);
    await this.process.stop({ graceMs: 15_000 });
  }
}

/** Registers `apiKey` through the edge's admin route (the same call `sirocco keys create` makes). */
async function createDevKey(edgeUrl: string, adminSecret: string, apiKey: string): Promise<void> {
  let answer: TextAnswer;
  try {
    answer = await fetchText(
      `${edgeUrl}/admin/keys`,
      {
        method: 'POST',
        headers: { authorization: `Bearer ${adminSecret}`, 'content-type': 'application/json' },
        // Creating a key is idempotent (stored by hash), so a persisted dev state and a fixed SIROCCO_DEV_KEY mix fine.
        body: JSON.stringify({ key: apiKey, tenant: 'dev' }),
      },
      // Bounded, body included: an edge that accepts the connection and never answers must not hang the start.
      DEV_KEY_TIMEOUT_MS,
    );
  } catch (error) {
    if (error instanceof DOMException && error.name === 'TimeoutError') {
      throw new CliError(
        `could not create the dev API key: POST ${edgeUrl}/admin/keys did not answer within ${DEV_KEY_TIMEOUT_MS / 1000} s`,
        1,
      );
    }
    throw error;
  }
  if (!answer.ok) throw new CliError(`could not create the dev API key: POST /admin/keys answered ${answer.status} ${answer.text}`, 1);
}

/** How long `npm start` waits for the edge to register the dev key (a local KV write; milliseconds when healthy). */
const DEV_KEY_TIMEOUT_MS = 60_000;

// ─── The command ─────────────────────────────────────────────────────────────

/**
 * The chat page with the key in the URL fragment, which the browser never sends to the server: the page moves it
 * into sessionStorage and removes it from the address bar.
 */
export function chatPageUrl(edgeUrl: string, apiKey: string): string {
  return `${edgeUrl}/#key=${encodeURIComponent(apiKey)}`;
}

export async function run(argv: string[]): Promise<number> {
  const { values } = parseCommandArgs(argv, {
    port: { type: 'string' },
    'sidecar-ports': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    console.log(
      `usage: sirocco dev [--port 8787] [--sidecar-ports 8081,8082]\n\n${summary}.\nEnvironment: PORT, ${ENV.devKey} (20 to 256 printable characters, as the edge takes keys), ${ENV.adminSecret} and ${ENV.sidecarSecret} (16 or more; generated when unset), ${ENV.home}, ${ENV.devVars}; all checked before anything starts.\n` +
        `The admin and sidecar secrets and the dev key it generates are kept in ${devVarsFile()} (0600) and reused on the next start.`,
    );
    return 0;
  }
  // Everything is checked before anything starts: a bad setting is one message naming it, and no process is spawned.
  const savedVarsFile = devVarsFile();
  const settings = checkDevEnvironment({
    portFlag: values.port,
    sidecarPortsFlag: values['sidecar-ports'],
    sidecarCount: DEFAULT_SIDECARS.length,
    env: process.env,
    devVarsFile: savedVarsFile,
    // An unreadable file is reported by the check itself.
    saved: await readDevVars(savedVarsFile).catch(() => new Map<string, string>()),
  });
  if (settings.problems.length > 0) {
    throw new CliError(`nothing was started:\n${settings.problems.map((problem) => `  ${problem}`).join('\n')}`);
  }
  const { edgePort } = settings;
  const sidecars = DEFAULT_SIDECARS.map((spec, index) => ({ ...spec, port: settings.sidecarPorts?.[index] ?? spec.port }));

  // Listen from the start: a Ctrl-C while the models load must stop the children too (they run in their own
  // process groups, so the terminal's SIGINT does not reach them).
  const interrupted = new AbortController();
  const signalled = new Promise<string>((resolveSignal) => {
    for (const name of ['SIGINT', 'SIGTERM'] as const) {
      // `on`, not `once`: a second Ctrl-C while stopping must not kill this process before its children.
      process.on(name, () => {
        interrupted.abort();
        resolveSignal(name);
      });
    }
  });

  const stack = await startStack({
    edgePort,
    sidecars,
    signal: interrupted.signal,
    persistTo: join(REPO_ROOT, '.wrangler/state'),
    devVarsFile: devVarsFile(),
    onProgress: (message) => console.log(`sirocco dev: ${message}`),
    onLog: (name, line) => {
      // The edge's lines become one compact line per request; routine lines of wrangler and the sidecars are left out,
      // and of the migrations (a failure still shows their last lines, in the error).
      const described =
        name === WRANGLER_NAME
          ? describeWranglerLine(line)
          : name === MIGRATIONS_NAME
            ? describeMigrationsLine(line)
            : describeSidecarLine(line);
      if (described !== undefined) console.log(`[${name === WRANGLER_NAME ? 'edge' : name}] ${described}`);
    },
  });

  console.log(
    [
      '',
      `  Sirocco is running at ${stack.edgeUrl}`,
      `  Chat page: ${chatPageUrl(stack.edgeUrl, stack.apiKey)}`,
      `  API key: ${stack.apiKey}`,
      `  Admin secret: ${process.env[ENV.adminSecret] ? `${ENV.adminSecret} from your environment` : `${ENV.adminSecret} in ${devVarsFile()}`}  (\`npx sirocco keys list\` reads it from there)`,
      '',
      `  curl -N ${stack.edgeUrl}/v1/chat/completions \\`,
      `    -H "Authorization: Bearer ${stack.apiKey}" -H "Content-Type: application/json" \\`,
      `    -d '{"model":"mistral-tiny","stream":true,"max_tokens":32,"messages":[{"role":"user","content":"Hello!"}]}'`,
      '',
      '  Each request is logged below as [edge] METHOD PATH STATUS  key  model  region  tokens  cache  ms.',
      '  The demo models have random weights: their output is nonsense. Ctrl-C stops everything.',
      '',
    ].join('\n'),
  );

  const reason = await Promise.race([signalled, stack.edgeExit.then((exit) => `unexpected: ${exit}`)]);
  console.log(`sirocco dev: stopping (${reason})…`);
  await stack.stop();
  return reason.startsWith('unexpected') ? 1 : 0;
}
