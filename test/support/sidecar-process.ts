/**
 * Test helpers: start the real sidecar as a child process (`node bin/sirocco.mjs serve --port 0 …`),
 * read its JSON log lines, talk to it over real HTTP, and stop it with a real signal. SIROCCO_HOME
 * is shared by every test file so the demo models are built once.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { REPO_ROOT, startSidecar } from '../../cli/processes.ts';
import { ENV } from '../../shared/protocol.ts';
import { readSseEvents, SSE_DONE } from '../../shared/sse.ts';

export const TEST_HOME = join(REPO_ROOT, 'test/.tmp/home');

/** A test that stops a sidecar expects it to exit by itself; SIGKILL after this long turns a hang into a failure. */
const STOP_GRACE_MS = 60_000;

export interface SidecarProcess {
  url: string;
  child: ChildProcess;
  /** Every JSON log line it wrote to stdout so far. */
  logs: Array<Record<string, unknown>>;
  /** Sends `signal` and resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  exited: Promise<number | null>;
}

export async function startSidecarProcess({
  args = [],
  env = {},
}: {
  args?: string[];
  env?: Record<string, string>;
} = {}): Promise<SidecarProcess> {
  await mkdir(TEST_HOME, { recursive: true });
  const logs: Array<Record<string, unknown>> = [];
  const { sidecar, url } = await startSidecar({
    serveArgs: ['--port', '0', '--threads', '1', ...args],
    env: { [ENV.home]: TEST_HOME, [ENV.sidecarSecret]: '', ...env },
    onLine: (line, stream) => {
      if (stream !== 'stdout') return;
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // not a log line
      }
    },
    readyTimeoutMs: 180_000,
  });
  return {
    url,
    child: sidecar.child,
    logs,
    exited: sidecar.exited,
    stop: (signal = 'SIGTERM') => sidecar.stop({ signal, graceMs: STOP_GRACE_MS }),
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
