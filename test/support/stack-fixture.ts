/**
 * Starts the real local stack (the same `startStack()` as `npm start`) for a test file: demo models, real sidecar
 * processes and `wrangler dev`, on free ports with a throwaway KV store, so it can run next to a developer's stack.
 */
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { DEFAULT_SIDECARS, type Stack, startStack } from '../../cli/commands/dev.ts';
import { freePort } from '../../cli/processes.ts';
import { ENV } from '../../shared/protocol.ts';
import { signRequest } from '../../shared/signing.ts';

const REPO_ROOT = resolve(import.meta.dirname, '../..');
/** Shared by every test file (and the sidecar suite), so the demo models are built once. */
export const TEST_HOME = join(REPO_ROOT, 'test/.tmp/home');
export const TEST_OUTPUT = join(REPO_ROOT, 'test/.tmp');
/** Screenshots and other files a person may want to look at after a run (git-ignored). */
export const TEST_ARTIFACTS = join(REPO_ROOT, 'test-artifacts');

export async function startTestStack(options: { regions?: string[]; edgeVars?: Record<string, string> } = {}): Promise<Stack> {
  await mkdir(TEST_HOME, { recursive: true });
  process.env[ENV.home] = TEST_HOME;
  const regions = options.regions ?? DEFAULT_SIDECARS.map((sidecar) => sidecar.region);
  const sidecars = [];
  for (const spec of DEFAULT_SIDECARS.filter((sidecar) => regions.includes(sidecar.region))) {
    sidecars.push({ ...spec, port: await freePort() });
  }
  const log: string[] = [];
  try {
    return await startStack({
      edgePort: await freePort(),
      sidecars,
      devKey: `sk-e2e-${randomBytes(16).toString('hex')}`,
      // Two cores for two sidecars, wrangler and the test itself.
      sidecarThreads: 1,
      edgeVars: options.edgeVars,
      onLog: (name, line) => {
        log.push(`[${name}] ${line}`);
        if (process.env.SIROCCO_E2E_VERBOSE) console.log(`[${name}] ${line}`);
      },
    });
  } catch (error) {
    console.error(log.slice(-40).join('\n'));
    throw error;
  }
}

/** GET a sidecar path directly, signed the way the edge signs it. */
export async function signedSidecarGet(stack: Stack, region: string, path: string): Promise<Response> {
  const sidecar = stack.sidecars.find((candidate) => candidate.region === region);
  if (!sidecar) throw new Error(`no sidecar in region ${region}`);
  const headers = await signRequest({ secret: stack.sidecarSecret, method: 'GET', path, body: '' });
  return fetch(`${sidecar.url}${path}`, { headers: { ...headers } });
}

/** Completion tokens a sidecar has generated so far (its Prometheus counter): which region served a request. */
export async function completionTokensServed(stack: Stack, region: string): Promise<number> {
  const text = await (await signedSidecarGet(stack, region, '/metrics')).text();
  return text
    .split('\n')
    .filter((line) => line.startsWith('sirocco_completion_tokens_total'))
    .reduce((sum, line) => sum + Number(line.split(' ').at(-1)), 0);
}

/** A figure for the record, printed only with SIROCCO_E2E_VERBOSE (tests stay quiet otherwise). */
export function reportFigure(suite: string, line: string): void {
  if (process.env.SIROCCO_E2E_VERBOSE) console.log(`${suite}: ${line}`);
}
