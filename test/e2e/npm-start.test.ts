/**
 * `npm start` (`node bin/sirocco.mjs dev`) as a user runs it: it prints the URL, the key and a curl line; that
 * curl gets a streamed answer, and every request (a refused one too) gets one access line in its console; the
 * secrets and dev key it generates are kept in its dev-vars file and reused by the next start; SIGTERM/Ctrl-C stops
 * every process it started; a taken port is a clear error.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { readDevVars } from '../../cli/dev-vars.ts';
import { freePort, isPortFree, type ManagedProcess, REPO_ROOT, SIROCCO_BIN, spawnNode } from '../../cli/processes.ts';
import { ENV } from '../../shared/protocol.ts';
import { readSseEvents, SSE_DONE } from '../../shared/sse.ts';
import { TEST_HOME } from '../support/stack-fixture.ts';

const running: ManagedProcess[] = [];
// SIGTERM first, so a test that failed half-way leaves no sidecar or wrangler dev behind (they run in their own
// process groups: a SIGKILL of `sirocco dev` alone would orphan them).
afterEach(async () => {
  await Promise.all(running.splice(0).map((dev) => dev.stop({ graceMs: 30_000 })));
});

/** The tests' own dev-vars file, so they never write the repository's .dev.vars. */
const devVarsFolder = mkdtempSync(join(tmpdir(), 'sirocco-npm-start-'));
const DEV_VARS = join(devVarsFolder, '.dev.vars');
afterAll(() => rmSync(devVarsFolder, { recursive: true, force: true }));

/** `node bin/sirocco.mjs dev …` as `npm start` runs it, with everything it prints kept. */
function startDev(args: string[], env: Record<string, string>) {
  const lines: string[] = [];
  const dev = spawnNode({
    name: 'sirocco dev',
    args: [SIROCCO_BIN, 'dev', ...args],
    env: { [ENV.home]: TEST_HOME, [ENV.devVars]: DEV_VARS, [ENV.adminSecret]: '', [ENV.sidecarSecret]: '', [ENV.devKey]: '', ...env },
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
    /** Resolves once it printed its banner; fails at once, with everything it printed, when it exits first. */
    running: async () => {
      await Promise.race([
        expect.poll(() => lines.join('\n'), { timeout: 240_000, interval: 250 }).toContain('Ctrl-C stops everything'),
        dev.exited.then((code) => {
          throw new Error(`sirocco dev exited (code ${code}) before it was running:\n${lines.join('\n')}`);
        }),
      ]);
    },
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

    await dev.running();
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

    // One access line per request in the console, the refused ones too, with key id, model, region and tokens.
    const refused = await fetch(url.replace('/v1/chat/completions', '/v1/models'));
    expect(refused.status).toBe(401);
    await refused.body?.cancel();
    await expect
      .poll(dev.output, { timeout: 10_000 })
      .toMatch(
        /\[edge\] POST \/v1\/chat\/completions 200 {2}key [0-9a-f]{16} {2}model mistral-tiny {2}region (eu-west|us-east) {2}tokens \d+ /,
      );
    await expect.poll(dev.output, { timeout: 10_000 }).toContain('[edge] GET /v1/models 401  key -');
    expect(dev.output()).not.toContain('[wrangler:info]');
    // A calm start: no stack traces (workerd's Broken pipe when a probe hung up early), no notices, no migration tables.
    expect(dev.output()).not.toMatch(/Broken pipe|\[ERROR\]|Scheduled Workers|wrangler d1 migrations apply/);

    // The secrets it generated are kept, for `sirocco keys` and the next start; the dev key came from the environment.
    const kept = await readDevVars(DEV_VARS);
    expect(kept.get(ENV.adminSecret)).toMatch(/^[0-9a-f]{64}$/);
    expect(kept.get(ENV.sidecarSecret)).toMatch(/^[0-9a-f]{64}$/);
    expect(kept.has(ENV.devKey)).toBe(false);
    expect(statSync(DEV_VARS).mode & 0o777).toBe(0o600);
    expect(output).toContain(`${ENV.adminSecret} in ${DEV_VARS}`);

    dev.kill('SIGTERM');
    expect(await dev.exited).toBe(0);
    expect(dev.output()).toContain('stopping (SIGTERM)');
    // Nothing it started is left running or listening.
    for (const port of [edgePort, eu, us]) {
      expect(await isPortFree(port)).toBe(true);
      expect(processesMentioning(`--port ${port}`)).toEqual([]);
    }
  }, 300_000);

  it('a restart prints the same dev key, which still works, and adds no second record of it', async () => {
    const listKeys = () =>
      JSON.parse(
        execFileSync(process.execPath, [SIROCCO_BIN, 'keys', 'list', '--json', '--url', edgeUrl], {
          cwd: REPO_ROOT,
          encoding: 'utf8',
          env: { ...process.env, [ENV.devVars]: DEV_VARS, [ENV.adminSecret]: '' },
        }),
      ) as Array<{ id: string; tenant: string }>;
    const [edgePort, eu, us] = [await freePort(), await freePort(), await freePort()];
    const edgeUrl = `http://127.0.0.1:${edgePort}`;
    const startAndReadKey = async () => {
      const dev = startDev(['--sidecar-ports', `${eu},${us}`], { PORT: String(edgePort) });
      await dev.running();
      return { dev, key: /API key: (\S+)/.exec(dev.output())![1]! };
    };

    const first = await startAndReadKey();
    expect((await readDevVars(DEV_VARS)).get(ENV.devKey)).toBe(first.key);
    const keysAfterFirst = listKeys();
    first.dev.kill('SIGTERM');
    expect(await first.dev.exited).toBe(0);

    const second = await startAndReadKey();
    expect(second.key).toBe(first.key);
    expect(second.dev.output()).toContain(`using the secrets and dev key kept in ${DEV_VARS}`);
    const models = await fetch(`${edgeUrl}/v1/models`, { headers: { authorization: `Bearer ${second.key}` } });
    expect(models.status).toBe(200);
    await models.body?.cancel();
    expect(listKeys()).toEqual(keysAfterFirst);
    second.dev.kill('SIGTERM');
    expect(await second.dev.exited).toBe(0);
  }, 600_000);

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
    expect(dev.output()).toContain("--port must be an integer from 1 to 65535 (the edge's port), got 99999");
  });
});
