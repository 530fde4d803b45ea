/**
 * Test helpers: start the real sidecar as a child process (`node bin/sirocco.mjs serve --port 0 …`),
 * read its JSON log lines, talk to it over real HTTP, and stop it with a real signal. SIROCCO_HOME
 * is shared by every test file so the demo models are built once.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { readSseEvents, SSE_DONE } from '../../shared/sse.ts';

const REPO_ROOT = resolve(import.meta.dirname, '../..');
export const TEST_HOME = join(REPO_ROOT, 'test/.tmp/home');

export interface SidecarProcess {
  url: string;
  child: ChildProcess;
  /** Every JSON log line so far. */
  logs: Array<Record<string, unknown>>;
  /** Sends `signal` and resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  exited: Promise<number | null>;
}

export async function startSidecarProcess({ args = [], env = {} }: { args?: string[]; env?: Record<string, string> } = {}): Promise<SidecarProcess> {
  await mkdir(TEST_HOME, { recursive: true });
  const child = spawn(process.execPath, [join(REPO_ROOT, 'bin/sirocco.mjs'), 'serve', '--port', '0', '--threads', '1', ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, SIROCCO_HOME: TEST_HOME, SIROCCO_SIDECAR_SECRET: '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: Array<Record<string, unknown>> = [];
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<number | null>((resolveExit) => child.once('exit', (code) => resolveExit(code)));

  const url = await new Promise<string>((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error(`sidecar not ready after 180 s\n${stderr}`)), 180_000);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      let record: Record<string, unknown>;
      try {
        record = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return; // not a log line
      }
      logs.push(record);
      if (record.msg === 'ready') {
        clearTimeout(timer);
        resolveUrl(String(record.url));
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`sidecar exited with code ${code} before it was ready\n${stderr}`));
    });
  });

  return {
    url,
    child,
    logs,
    exited,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

export function postChat(url: string, body: unknown, init: RequestInit = {}): Promise<Response> {
  return fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(init.headers as Record<string, string> | undefined) },
    body: typeof body === 'string' ? body : body instanceof Uint8Array ? new Blob([new Uint8Array(body)]) : JSON.stringify(body),
    ...init,
  });
}

export interface StreamResult {
  /** Every data payload parsed as JSON, in order ([DONE] excluded). */
  chunks: Array<Record<string, unknown>>;
  text: string;
  sawDone: boolean;
}

/** Reads a whole SSE response, checking the framing as it goes. */
export async function readStream(response: Response): Promise<StreamResult> {
  const chunks: Array<Record<string, unknown>> = [];
  let sawDone = false;
  let text = '';
  for await (const event of readSseEvents(response.body!)) {
    if (event.data === SSE_DONE) {
      sawDone = true;
      continue;
    }
    const chunk = JSON.parse(event.data) as Record<string, unknown>;
    chunks.push(chunk);
    const choices = chunk.choices as Array<{ delta?: { content?: string } }> | undefined;
    text += choices?.[0]?.delta?.content ?? '';
  }
  return { chunks, text, sawDone };
}

/** A chat request for the demo model. */
export function chatRequest(content: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { model: 'mistral-tiny', messages: [{ role: 'user', content }], max_tokens: 8, ...extra };
}
