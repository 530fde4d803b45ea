/**
 * Child processes, launched one way for `sirocco dev`, the benches and the tests: `sirocco serve` sidecars,
 * `wrangler dev`, any node script; readiness waits that name the process and show its last output when it dies
 * or times out; free ports; and a stop that escalates from SIGTERM to SIGKILL.
 *
 * Secrets reach children through their environment (sidecars) or a private env file (wrangler dev), never
 * through argv, where any local user can read them with `ps`.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { ENV } from '../shared/protocol.ts';
import { fetchText } from './http.ts';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const SIROCCO_BIN = join(REPO_ROOT, 'bin/sirocco.mjs');
export const WRANGLER_BIN = join(REPO_ROOT, 'node_modules/wrangler/bin/wrangler.js');

export type OutputStream = 'stdout' | 'stderr';
export type LineListener = (line: string, stream: OutputStream) => void;

// ─── Any node child ──────────────────────────────────────────────────────────

export interface NodeLaunch {
  /** Names the process in errors, e.g. `sidecar eu-west`. */
  name: string;
  /** Arguments to node, the script first. */
  args: string[];
  /** Set on top of this process's environment. */
  env?: Record<string, string>;
  /** Default: the repository root. */
  cwd?: string;
  /**
   * Its own process group, so a stop reaches what it spawns too (wrangler → workerd). The terminal's Ctrl-C then
   * no longer reaches it: the launcher must stop it (an exit of this process still kills it, see below).
   */
  ownProcessGroup?: boolean;
  /** Keeps its stdin an open pipe from this process: a child that exits at the end of its input dies with us, however we die. */
  stdinPipe?: boolean;
  /** Every non-empty line it prints. */
  onLine?: LineListener;
  /** How many of its last lines errors show (default 40). */
  keepLines?: number;
}

export interface StopOptions {
  /** Default SIGTERM. */
  signal?: NodeJS.Signals;
  /** How long it gets to exit before SIGKILL. */
  graceMs: number;
}

/** How long an exited child's output may take to arrive before an error message is written without the rest. */
const OUTPUT_DRAIN_MS = 1_000;

export class ManagedProcess {
  readonly name: string;
  readonly child: ChildProcess;
  /** Resolves with the exit code (null when a signal ended it or it could not be started). */
  readonly exited: Promise<number | null>;
  private readonly ownProcessGroup: boolean;
  private readonly keepLines: number;
  private readonly recent: string[] = [];
  private readonly listeners = new Set<LineListener>();
  private readonly outputDrained: Promise<void>;
  private hasExited = false;

  constructor(launch: NodeLaunch) {
    this.name = launch.name;
    this.ownProcessGroup = launch.ownProcessGroup ?? false;
    this.keepLines = launch.keepLines ?? 40;
    if (launch.onLine) this.listeners.add(launch.onLine);
    this.child = spawn(process.execPath, launch.args, {
      cwd: launch.cwd ?? REPO_ROOT,
      env: { ...process.env, ...launch.env },
      detached: this.ownProcessGroup,
      stdio: [launch.stdinPipe ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    this.outputDrained = Promise.all([this.readLines(this.child.stdout!, 'stdout'), this.readLines(this.child.stderr!, 'stderr')]).then(
      () => {},
    );
    this.exited = new Promise((resolveExit) => {
      const settle = (code: number | null) => {
        this.hasExited = true;
        resolveExit(code);
      };
      this.child.once('exit', (code) => settle(code));
      this.child.once('error', () => settle(null));
    });
    liveProcesses.add(this);
    void this.exited.then(() => liveProcesses.delete(this));
  }

  get running(): boolean {
    return !this.hasExited;
  }

  /** Its last lines of output (stdout and stderr interleaved as they arrived). */
  get lastOutput(): string {
    return this.recent.join('\n');
  }

  /** Calls `listener` with every line printed from now on; returns what unsubscribes it. */
  onLine(listener: LineListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Sends `signal` to it (to its whole group when it has one); a no-op once it is gone. */
  kill(signal: NodeJS.Signals): void {
    if (!this.running) return;
    if (this.ownProcessGroup) this.killGroup(signal);
    else this.child.kill(signal);
  }

  /** `signal` (SIGTERM: a sidecar drains its streams), SIGKILL after `graceMs`; resolves with the exit code. */
  async stop({ signal = 'SIGTERM', graceMs }: StopOptions): Promise<number | null> {
    if (this.running) {
      this.kill(signal);
      const timer = setTimeout(() => this.kill('SIGKILL'), graceMs);
      await this.exited;
      clearTimeout(timer);
    }
    // The leader may exit before the rest of its group (wrangler before its workerd): make sure none is left.
    if (this.ownProcessGroup) this.killGroup('SIGKILL');
    return this.exited;
  }

  /**
   * Once it exited: resolves when everything it printed has been read (the exit can come first), or after a second,
   * since a process it spawned may hold its output open. While it runs, at once.
   */
  async outputSettled(): Promise<void> {
    if (this.running) return;
    await Promise.race([this.outputDrained, new Promise((resolveWait) => setTimeout(resolveWait, OUTPUT_DRAIN_MS).unref())]);
  }

  /** An error that names it, says `what` happened (e.g. "exited during start-up"), and ends with its last output. */
  async failure(what: string): Promise<ProcessError> {
    await this.outputSettled();
    return new ProcessError(this.name, `${this.name} ${what}:\n${this.lastOutput || '(no output)'}`);
  }

  private killGroup(signal: NodeJS.Signals): void {
    if (this.child.pid === undefined) return;
    try {
      process.kill(-this.child.pid, signal);
    } catch {
      // The group is already gone.
    }
  }

  /** Splits a stream into lines, holding a partial line until the rest arrives. */
  private readLines(stream: Readable, name: OutputStream): Promise<void> {
    stream.setEncoding('utf8');
    let pending = '';
    const emit = (line: string) => {
      if (line.trim() === '') return;
      this.recent.push(line);
      if (this.recent.length > this.keepLines) this.recent.shift();
      for (const listener of this.listeners) listener(line, name);
    };
    stream.on('data', (text: string) => {
      const lines = (pending + text).split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) emit(line);
    });
    return new Promise((resolveEnd) => {
      stream.once('close', () => {
        emit(pending);
        pending = '';
        resolveEnd();
      });
    });
  }
}

/** A child that died, failed or never became ready; the message names it and ends with its last output. */
export class ProcessError extends Error {
  constructor(
    readonly processName: string,
    message: string,
  ) {
    super(message);
    this.name = 'ProcessError';
  }
}

export function spawnNode(launch: NodeLaunch): ManagedProcess {
  return new ManagedProcess(launch);
}

const liveProcesses = new Set<ManagedProcess>();
// Last resort when this process exits without stopping its children: no orphan sidecars or workerd (children in
// their own group would otherwise outlive even a Ctrl-C).
process.on('exit', () => {
  for (const child of liveProcesses) child.kill('SIGKILL');
  for (const folder of privateFolders) rmSync(folder, { recursive: true, force: true });
});

// ─── Ports and readiness ─────────────────────────────────────────────────────

/**
 * Ports below the OS's ephemeral range, where outgoing connections take their local ports: a port
 * chosen free there is only taken before its use by another listener, not by any connection
 * opened meanwhile (`wrangler dev` once lost its inspector port that way while the sidecars loaded).
 */
function listeningPortRange(): { low: number; high: number } {
  let ephemeralLow = 32768; // Linux's default; macOS and Windows start at 49152
  try {
    const [low] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (low !== undefined && Number.isInteger(low) && low > 2048) ephemeralLow = low;
  } catch {
    // no /proc: the default
  }
  return { low: Math.min(20000, ephemeralLow >> 1), high: ephemeralLow - 1 };
}

/** A port nothing listens on right now (another listener may still take it before it is used), outside the ephemeral range where one is free. */
export async function freePort(): Promise<number> {
  const { low, high } = listeningPortRange();
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = low + Math.floor(Math.random() * (high - low + 1));
    if (await isPortFree(port)) return port;
  }
  return anyFreePort();
}

/** A port the OS picks from its ephemeral range. */
async function anyFreePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen({ port: 0, host: '127.0.0.1' }, () => {
      const address = probe.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      probe.close(() => resolvePort(port));
    });
  });
}

/** Whether nothing listens on `port` on the loopback interface. */
export async function isPortFree(port: number): Promise<boolean> {
  return new Promise((resolveFree) => {
    const probe = createServer();
    probe.once('error', () => resolveFree(false));
    probe.listen({ port, host: '127.0.0.1', exclusive: true }, () => probe.close(() => resolveFree(true)));
  });
}

export interface ReadyWaitOptions {
  timeoutMs: number;
  /** Stops waiting: the wait throws the signal's reason. */
  signal?: AbortSignal;
  /** Default 250 ms. */
  intervalMs?: number;
}

/** How long one readiness probe may take, body included. */
const PROBE_TIMEOUT_MS = 2_000;

/** Polls `url` until it answers 2xx; fails early (with its last output) when `owner` exits, or after `timeoutMs`. */
export async function waitUntilReady(
  owner: ManagedProcess,
  url: string,
  { timeoutMs, signal, intervalMs = 250 }: ReadyWaitOptions,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    signal?.throwIfAborted();
    if (!owner.running) throw await owner.failure(`exited during start-up (code ${await owner.exited})`);
    try {
      if ((await fetchText(url, {}, PROBE_TIMEOUT_MS)).ok) return;
    } catch {
      // Not listening yet, or not answering yet.
    }
    if (Date.now() > deadline) throw await owner.failure(`was not ready at ${url} after ${Math.round(timeoutMs / 1000)} s`);
    await new Promise((resolveWait) => setTimeout(resolveWait, intervalMs));
  }
}

/**
 * What `pick` finds in the first line (from now on) it finds something in; fails (with the last output) when `owner`
 * exits first, or after `timeoutMs`. `what` names the line in errors, e.g. "its URL".
 */
export async function waitForLine<Found>(
  owner: ManagedProcess,
  pick: (line: string, stream: OutputStream) => Found | undefined,
  { timeoutMs, what }: { timeoutMs: number; what: string },
): Promise<Found> {
  let unsubscribe = () => {};
  let timer: NodeJS.Timeout | undefined;
  try {
    return await new Promise<Found>((resolveFound, reject) => {
      unsubscribe = owner.onLine((line, stream) => {
        const found = pick(line, stream);
        if (found !== undefined) resolveFound(found);
      });
      timer = setTimeout(
        () => void owner.failure(`did not print ${what} within ${Math.round(timeoutMs / 1000)} s`).then(reject),
        timeoutMs,
      );
      void owner.exited.then((code) => owner.failure(`exited (code ${code}) before it printed ${what}`)).then(reject);
    });
  } finally {
    unsubscribe();
    clearTimeout(timer);
  }
}

// ─── Sidecars: `sirocco serve` ───────────────────────────────────────────────

export interface SidecarLaunch extends Omit<NodeLaunch, 'name' | 'args'> {
  /** Default "sidecar". */
  name?: string;
  /** Everything after `sirocco serve`: --model, --port (0: the OS chooses), --threads, … */
  serveArgs: string[];
}

/**
 * V8 options for a sidecar's Node. Its engine keeps every core it is given busy (the JS thread and
 * the addon's helper thread); V8's concurrent marking threads ran on those same cores and slowed
 * each step they overlapped. With the collector on the JS thread alone (AVX2 EPYC, 2 cores, three
 * rounds of 8 streams of the 1.0B shape, one run each): full collections 54 -> 14, decode
 * 84.6–91.6 -> 92.4–98.5 tokens/s, p90 inter-token latency 109–127 -> 90–99 ms. A startup flag only: V8 aborts when
 * it is set at run time.
 */
export const SIDECAR_NODE_OPTIONS = ['--single-threaded-gc'];

export function spawnSidecar(launch: SidecarLaunch): ManagedProcess {
  const { name = 'sidecar', serveArgs, ...rest } = launch;
  return spawnNode({ ...rest, name, args: [...SIDECAR_NODE_OPTIONS, SIROCCO_BIN, 'serve', ...serveArgs] });
}

/** The URL in a sidecar's `listening` log line: where one started with `--port 0` listens. */
export function sidecarListeningUrl(sidecar: ManagedProcess, timeoutMs: number): Promise<string> {
  return waitForLine(sidecar, (line, stream) => (stream === 'stdout' ? listeningUrl(line) : undefined), {
    timeoutMs,
    what: 'its "listening" log line',
  });
}

function listeningUrl(line: string): string | undefined {
  try {
    const record = JSON.parse(line) as { msg?: unknown; url?: unknown };
    return record.msg === 'listening' && typeof record.url === 'string' ? record.url : undefined;
  } catch {
    return undefined; // not a log line
  }
}

/**
 * Spawns a sidecar and waits until its /ready answers 200 (its models are loaded), within `readyTimeoutMs` in all;
 * with `--port 0` its URL comes from its log. Stops it when it does not get there.
 */
export async function startSidecar(launch: SidecarLaunch & { readyTimeoutMs: number }): Promise<{ sidecar: ManagedProcess; url: string }> {
  const { readyTimeoutMs, ...spawnOptions } = launch;
  const deadline = Date.now() + readyTimeoutMs;
  const sidecar = spawnSidecar(spawnOptions);
  try {
    const url = await sidecarListeningUrl(sidecar, readyTimeoutMs);
    await waitUntilReady(sidecar, `${url}/ready`, { timeoutMs: Math.max(0, deadline - Date.now()) });
    return { sidecar, url };
  } catch (error) {
    await sidecar.stop({ graceMs: 5_000 });
    throw error;
  }
}

// ─── The edge: `wrangler dev` ────────────────────────────────────────────────

export interface WranglerDevLaunch {
  /** Default "wrangler dev". */
  name?: string;
  port: number;
  /** Local KV and Durable Object state. */
  persistTo: string;
  logLevel: 'debug' | 'info' | 'log' | 'warn' | 'error' | 'none';
  /** wrangler's debugger listens on a fixed port (9229) unless told otherwise: two at once would collide. */
  inspectorPort?: number;
  /** Plain bindings, passed as `--var NAME:value`: visible in `ps`, so never secrets. */
  vars?: Record<string, string>;
  /** Secret bindings, passed in a private env file that is removed when wrangler exits. */
  secrets?: Record<string, string>;
  onLine?: LineListener;
}

/** Folders holding secrets for running children: removed when they exit, or at the latest when this process does. */
const privateFolders = new Set<string>();

/** `wrangler dev` of this repository's worker on 127.0.0.1, in its own process group (it spawns workerd). */
export async function spawnWranglerDev(launch: WranglerDevLaunch): Promise<ManagedProcess> {
  const args = [WRANGLER_BIN, 'dev', '--port', String(launch.port), '--ip', '127.0.0.1', '--persist-to', launch.persistTo];
  args.push('--show-interactive-dev-session=false', '--log-level', launch.logLevel);
  if (launch.inspectorPort !== undefined) args.push('--inspector-port', String(launch.inspectorPort));
  for (const [name, value] of Object.entries(launch.vars ?? {})) args.push('--var', `${name}:${value}`);
  const env: Record<string, string> = { WRANGLER_SEND_METRICS: 'false' };

  let secretsFolder: string | undefined;
  const secrets = Object.entries(launch.secrets ?? {});
  if (secrets.length > 0) {
    const lines = secrets.map(([name, value]) => dotenvLine(name, value));
    secretsFolder = await mkdtemp(join(tmpdir(), 'sirocco-wrangler-secrets-'));
    privateFolders.add(secretsFolder);
    const secretsFile = join(secretsFolder, 'secrets.env');
    await writeFile(secretsFile, `${lines.join('\n')}\n`, { mode: 0o600 });
    // Given an --env-file, wrangler reads no other secrets file: name the project's own first, so ours win.
    for (const file of [...projectSecretFiles(), secretsFile]) args.push('--env-file', file);
    // A user's `false` here would make wrangler skip every env file, ours included.
    env.CLOUDFLARE_LOAD_DEV_VARS_FROM_DOT_ENV = 'true';
  }

  const wrangler = spawnNode({ name: launch.name ?? 'wrangler dev', args, env, ownProcessGroup: true, onLine: launch.onLine });
  if (secretsFolder !== undefined) {
    const folder = secretsFolder;
    void wrangler.exited.then(async () => {
      await rm(folder, { recursive: true, force: true });
      privateFolders.delete(folder);
    });
  }
  return wrangler;
}

/** The usage ledger's D1 binding in wrangler.toml (`wrangler d1 migrations apply` takes a binding or a name). */
export const USAGE_DB_BINDING = 'USAGE_DB';

/**
 * Applies the ledger's migrations (migrations/) to the local D1 database in `persistTo`, the state folder `wrangler
 * dev --persist-to` then serves: the same command as for a deploy, with `--local`. Already applied ones are skipped.
 */
export async function applyLocalD1Migrations(launch: { persistTo: string; onLine?: LineListener }): Promise<void> {
  const migrate = spawnNode({
    name: 'wrangler d1 migrations apply',
    args: [WRANGLER_BIN, 'd1', 'migrations', 'apply', USAGE_DB_BINDING, '--local', '--persist-to', launch.persistTo],
    // CI: never ask for a confirmation (wrangler answers yes on its own without a terminal, but says so).
    env: { WRANGLER_SEND_METRICS: 'false', CI: 'true' },
    onLine: launch.onLine,
  });
  const code = await migrate.exited;
  if (code !== 0) throw await migrate.failure(`failed (exit code ${code})`);
}

/**
 * The project's local secrets file: the repository's .dev.vars (where wrangler dev looks), or SIROCCO_DEV_VARS.
 * `npm start` keeps its generated secrets there (cli/dev-vars.ts), so the file wrangler reads and ours agree.
 */
export function devVarsFile(): string {
  return process.env[ENV.devVars] || join(REPO_ROOT, '.dev.vars');
}

/** Where wrangler dev reads local secrets when it is given no --env-file: .dev.vars, else .env and .env.local. */
function projectSecretFiles(): string[] {
  const devVars = devVarsFile();
  if (existsSync(devVars)) return [devVars];
  if (process.env.CLOUDFLARE_LOAD_DEV_VARS_FROM_DOT_ENV?.toLowerCase() === 'false') return [];
  return ['.env', '.env.local'].map((file) => join(REPO_ROOT, file)).filter((file) => existsSync(file));
}

/**
 * `NAME=value` as wrangler's env-file reader (dotenv, then dotenv-expand) gives it back verbatim: quoted with a
 * quote the value does not contain, every `$` escaped so no `$VAR` or `${VAR}` in it is expanded.
 */
export function dotenvLine(name: string, value: string): string {
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new Error(`cannot pass "${name}" to wrangler dev: not a variable name`);
  if (/[\r\n]/.test(value)) throw new Error(`cannot pass ${name} to wrangler dev: its value contains a line break`);
  const quote = ["'", '`'].find((candidate) => !value.includes(candidate));
  if (quote === undefined) throw new Error(`cannot pass ${name} to wrangler dev: its value contains both ' and \``);
  return `${name}=${quote}${value.replaceAll('$', '\\$')}${quote}`;
}
