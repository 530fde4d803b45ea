/**
 * `npm start` (`node bin/sirocco.mjs dev`) as a user runs it: it prints the URL, the key and a curl line; that
 * curl gets a streamed answer; SIGTERM/Ctrl-C stops every process it started; a taken port is a clear error.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { freePort } from '../../cli/commands/dev.ts';
import { readSseEvents, SSE_DONE } from '../../shared/sse.ts';
import { TEST_HOME } from '../support/stack-fixture.ts';

const REPO_ROOT = join(import.meta.dirname, '../..');
const running: ChildProcess[] = [];
afterEach(() => {
  for (const child of running.splice(0)) if (child.exitCode === null) child.kill('SIGKILL');
});

function startDev(args: string[], env: Record<string, string>) {
  const child = spawn(process.execPath, ['bin/sirocco.mjs', 'dev', ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, SIROCCO_HOME: TEST_HOME, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.push(child);
  let output = '';
  child.stdout!.on('data', (data: Buffer) => (output += data.toString()));
  child.stderr!.on('data', (data: Buffer) => (output += data.toString()));
  const exited = once(child, 'exit').then(([code]) => code as number | null);
  return { child, exited, output: () => output };
}

/** Live processes whose command line contains `text` (zombies show no arguments, so they do not count). */
function processesMentioning(text: string): string[] {
  return execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' })
    .split('\n')
    .filter((line) => line.includes(text) && !line.startsWith('ps '));
}

async function isListening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(true));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(false)));
  });
}

describe('npm start (sirocco dev)', () => {
  it('brings the stack up with SIROCCO_DEV_KEY, serves the printed curl line, and stops everything on SIGTERM', async () => {
    const [edgePort, eu, us] = [await freePort(), await freePort(), await freePort()];
    const devKey = 'sk-dev-e2e-0123456789abcdef';
    const dev = startDev(['--sidecar-ports', `${eu},${us}`], { PORT: String(edgePort), SIROCCO_DEV_KEY: devKey });

    await expect.poll(dev.output, { timeout: 240_000, interval: 250 }).toContain('Ctrl-C stops everything');
    const output = dev.output();
    expect(output).toContain(`Sirocco is running at http://localhost:${edgePort}`);
    expect(output).toContain(`API key: ${devKey}`);

    // Run the printed curl line's request (URL, headers and body taken from the output itself).
    const url = /curl -N (\S+)/.exec(output)![1]!;
    const body = /-d '(.+)'/.exec(output)![1]!;
    expect(output).toContain(`-H "Authorization: Bearer ${devKey}"`);
    const response = await fetch(url, {
      method: 'POST',
      headers: { authorization: `Bearer ${devKey}`, 'content-type': 'application/json' },
      body,
    });
    expect(response.status).toBe(200);
    const events: string[] = [];
    for await (const event of readSseEvents(response.body!)) events.push(event.data);
    expect(events.length).toBeGreaterThan(3);
    expect(events.at(-1)).toBe(SSE_DONE);

    dev.child.kill('SIGTERM');
    expect(await dev.exited).toBe(0);
    expect(dev.output()).toContain('stopping (SIGTERM)');
    // Nothing it started is left running or listening.
    for (const port of [edgePort, eu, us]) {
      expect(await isListening(port)).toBe(false);
      expect(processesMentioning(`--port ${port}`)).toEqual([]);
    }
  }, 300_000);

  it('a SIGTERM while the models load stops what was started and exits 130', async () => {
    const [edgePort, eu, us] = [await freePort(), await freePort(), await freePort()];
    const dev = startDev(['--sidecar-ports', `${eu},${us}`], { PORT: String(edgePort) });
    await expect.poll(dev.output, { timeout: 120_000, interval: 50 }).toContain('waiting for the sidecars');

    dev.child.kill('SIGTERM');
    expect(await dev.exited).toBe(130);
    expect(dev.output()).toContain('interrupted while starting');
    for (const port of [edgePort, eu, us]) {
      expect(await isListening(port)).toBe(false);
      expect(processesMentioning(`--port ${port}`)).toEqual([]);
    }
  }, 180_000);

  it('refuses to start when the edge port is taken, naming the port and PORT', async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as { port: number }).port;
    try {
      const dev = startDev([], { PORT: String(port) });
      expect(await dev.exited).toBe(1);
      expect(dev.output()).toContain(`port ${port} (edge) is already in use`);
      expect(dev.output()).toContain('set PORT');
    } finally {
      blocker.close();
    }
  });

  it('rejects a bad port with a message naming it', async () => {
    const dev = startDev(['--port', '99999'], {});
    expect(await dev.exited).toBe(2);
    expect(dev.output()).toContain('--port must be an integer in [1, 65535], got "99999"');
  });
});
