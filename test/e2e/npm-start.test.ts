/**
 * `npm start` (`node bin/sirocco.mjs dev`) as a user runs it: it prints the URL, the key and a curl line; that
 * curl gets a streamed answer; SIGTERM/Ctrl-C stops every process it started; a taken port is a clear error.
 */
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { freePort, isPortFree, type ManagedProcess, SIROCCO_BIN, spawnNode } from '../../cli/processes.ts';
import { ENV } from '../../shared/protocol.ts';
import { readSseEvents, SSE_DONE } from '../../shared/sse.ts';
import { TEST_HOME } from '../support/stack-fixture.ts';

const running: ManagedProcess[] = [];
afterEach(() => {
  for (const dev of running.splice(0)) dev.kill('SIGKILL');
});

/** `node bin/sirocco.mjs dev …` as `npm start` runs it, with everything it prints kept. */
function startDev(args: string[], env: Record<string, string>) {
  const lines: string[] = [];
  const dev = spawnNode({
    name: 'sirocco dev',
    args: [SIROCCO_BIN, 'dev', ...args],
    env: { [ENV.home]: TEST_HOME, ...env },
    onLine: (line) => lines.push(line),
  });
  running.push(dev);
  return {
    kill: (signal: NodeJS.Signals) => dev.kill(signal),
    // Its last words (an error before it exits) are what several tests check.
    exited: dev.exited.then(async (code) => {
      await dev.outputSettled();
      return code;
    }),
    output: () => lines.join('\n'),
  };
}

/** Live processes whose command line contains `text` (zombies show no arguments, so they do not count). */
function processesMentioning(text: string): string[] {
  return execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' })
    .split('\n')
    .filter((line) => line.includes(text) && !line.startsWith('ps '));
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

    dev.kill('SIGTERM');
    expect(await dev.exited).toBe(0);
    expect(dev.output()).toContain('stopping (SIGTERM)');
    // Nothing it started is left running or listening.
    for (const port of [edgePort, eu, us]) {
      expect(await isPortFree(port)).toBe(true);
      expect(processesMentioning(`--port ${port}`)).toEqual([]);
    }
  }, 300_000);

  it('a SIGTERM while the models load stops what was started and exits 130', async () => {
    const [edgePort, eu, us] = [await freePort(), await freePort(), await freePort()];
    const dev = startDev(['--sidecar-ports', `${eu},${us}`], { PORT: String(edgePort) });
    await expect.poll(dev.output, { timeout: 120_000, interval: 50 }).toContain('waiting for the sidecars');

    dev.kill('SIGTERM');
    expect(await dev.exited).toBe(130);
    expect(dev.output()).toContain('interrupted while starting');
    for (const port of [edgePort, eu, us]) {
      expect(await isPortFree(port)).toBe(true);
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
    expect(dev.output()).toContain('--port must be an integer from 1 to 65535, got 99999');
  });
});
