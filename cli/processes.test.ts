import { existsSync, readFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createServer } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import {
  dotenvLine,
  freePort,
  isPortFree,
  type ManagedProcess,
  ProcessError,
  spawnNode,
  waitForLine,
  waitUntilReady,
} from './processes.ts';

/** Small node scripts as children: no model, no wrangler, each start well under a second. */
const started: ManagedProcess[] = [];
function script(name: string, source: string, options: { ownProcessGroup?: boolean } = {}): ManagedProcess {
  const child = spawnNode({ name, args: ['-e', source], ...options });
  started.push(child);
  return child;
}
afterEach(async () => {
  await Promise.all(started.splice(0).map((child) => child.stop({ signal: 'SIGKILL', graceMs: 0 })));
});

/** A waitForLine picker for one exact line. */
const exactly = (text: string) => (line: string) => (line === text ? line : undefined);

/** Whether `pid` is a live process (a zombie waiting for its parent to reap it counts as gone). */
function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true; // no /proc: kill(pid, 0) is all there is
  }
}

describe('freePort', () => {
  it('returns a port nothing listens on, below the ephemeral range outgoing connections use, that can then be listened on', async () => {
    const port = await freePort();
    expect(port).toBeGreaterThanOrEqual(1024);
    if (existsSync('/proc/sys/net/ipv4/ip_local_port_range')) {
      const [ephemeralLow] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
      expect(port).toBeLessThan(ephemeralLow!);
    }
    expect(await isPortFree(port)).toBe(true);
    const server = createServer();
    await new Promise<void>((resolveListen) => server.listen(port, '127.0.0.1', resolveListen));
    try {
      expect(await isPortFree(port)).toBe(false);
    } finally {
      server.close();
    }
  });
});

describe('waitUntilReady', () => {
  it('resolves once the URL answers 200', async () => {
    const port = await freePort();
    const server = script(
      'tiny server',
      `setTimeout(() => require('node:http').createServer((q, s) => s.end('ok')).listen(${port}, '127.0.0.1'), 300)`,
    );
    await waitUntilReady(server, `http://127.0.0.1:${port}/ready`, { timeoutMs: 10_000, intervalMs: 50 });
  });

  it('fails as soon as the process exits, naming it and quoting its last output', async () => {
    const doomed = script('sidecar doomed', `console.log('loading models'); console.error('no model at /nowhere'); process.exit(3)`);
    const url = `http://127.0.0.1:${await freePort()}/ready`;
    const failure = await waitUntilReady(doomed, url, { timeoutMs: 30_000 }).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(ProcessError);
    expect((failure as ProcessError).processName).toBe('sidecar doomed');
    expect((failure as Error).message).toMatch(
      /^sidecar doomed exited during start-up \(code 3\):\nloading models\nno model at \/nowhere$/,
    );
  });

  it('gives up at the deadline, naming the process and the URL', async () => {
    const silent = script('silent child', `console.log('still loading'); setInterval(() => {}, 1000)`);
    // The child has spoken before the wait starts: on a busy machine node can take longer to
    // start than the 300 ms deadline, and the message would then have no output to show.
    await waitForLine(silent, exactly('still loading'), { timeoutMs: 10_000, what: '"still loading"' });
    const url = `http://127.0.0.1:${await freePort()}/ready`;
    await expect(waitUntilReady(silent, url, { timeoutMs: 300, intervalMs: 50 })).rejects.toThrow(
      new RegExp(`^silent child was not ready at ${url} after 0 s:\\nstill loading$`),
    );
  });

  it('reads the whole answer: a server that sends the body after the headers is not hung up on mid-response', async () => {
    // workerd prints a "Broken pipe" stack trace for every client that closes the connection before the body is
    // written; on a busy machine its headers and body can go out separately.
    const owner = script('edge', 'setInterval(() => {}, 1000)');
    let answered!: (ending: string) => void;
    const ending = new Promise<string>((resolveEnding) => (answered = resolveEnding));
    const server = createHttpServer((_request, response) => {
      response.on('close', () => answered(response.writableFinished ? 'finished' : 'hung up'));
      response.writeHead(200, { 'content-type': 'application/json' });
      response.flushHeaders();
      setTimeout(() => response.end('{"status":"ok"}'), 100);
    });
    await new Promise<void>((resolveListen) => server.listen(0, '127.0.0.1', resolveListen));
    try {
      await waitUntilReady(owner, `http://127.0.0.1:${(server.address() as AddressInfo).port}/health`, { timeoutMs: 10_000 });
      expect(await ending).toBe('finished');
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });

  it('stops waiting when its signal is aborted', async () => {
    const silent = script('silent child', 'setInterval(() => {}, 1000)');
    const interrupted = new AbortController();
    setTimeout(() => interrupted.abort(new Error('Ctrl-C')), 100);
    await expect(
      waitUntilReady(silent, `http://127.0.0.1:${await freePort()}/`, { timeoutMs: 30_000, signal: interrupted.signal }),
    ).rejects.toThrow('Ctrl-C');
  });
});

describe('waitForLine', () => {
  it('returns the first matching line, even one split across writes', async () => {
    const child = script(
      'printer',
      `process.stdout.write('noise\\nhttp://127.0.'); setTimeout(() => process.stdout.write('0.1:1234\\n'), 100); setInterval(() => {}, 1000)`,
    );
    const url = await waitForLine(child, (line) => (line.startsWith('http://') ? line : undefined), { timeoutMs: 10_000, what: 'its URL' });
    expect(url).toBe('http://127.0.0.1:1234');
  });

  it('fails when the process exits before printing it', async () => {
    const child = script('quitter', `console.log('bye')`);
    await expect(
      waitForLine(child, (line) => (line.startsWith('http://') ? line : undefined), { timeoutMs: 10_000, what: 'its URL' }),
    ).rejects.toThrow(/^quitter exited \(code 0\) before it printed its URL:\nbye$/);
  });
});

describe('stop', () => {
  it('resolves with the exit code of a child that exits on SIGTERM', async () => {
    const polite = script('polite child', `process.on('SIGTERM', () => process.exit(7)); console.log('up'); setInterval(() => {}, 1000)`);
    await waitForLine(polite, exactly('up'), { timeoutMs: 10_000, what: '"up"' });
    expect(await polite.stop({ graceMs: 10_000 })).toBe(7);
  });

  it('SIGKILLs a child that ignores SIGTERM once the grace period is over', async () => {
    const stubborn = script(
      'stubborn child',
      `process.on('SIGTERM', () => console.log('ignoring SIGTERM')); console.log('up'); setInterval(() => {}, 1000)`,
    );
    await waitForLine(stubborn, exactly('up'), { timeoutMs: 10_000, what: '"up"' });
    const stopping = Date.now();
    expect(await stubborn.stop({ graceMs: 500 })).toBeNull();
    expect(Date.now() - stopping).toBeGreaterThanOrEqual(450);
    expect(stubborn.child.signalCode).toBe('SIGKILL');
    expect(stubborn.running).toBe(false);
    await stubborn.outputSettled();
    expect(stubborn.lastOutput).toContain('ignoring SIGTERM');
  });

  it('also stops what a child in its own process group spawned, even when the child itself exits first', async () => {
    const grandchild = `process.on('SIGTERM', () => {}); setInterval(() => {}, 1000)`;
    const parent = script(
      'launcher',
      `const g = require('node:child_process').spawn(process.execPath, ['-e', ${JSON.stringify(grandchild)}], { stdio: 'ignore' });
       process.on('SIGTERM', () => process.exit(0)); console.log(String(g.pid)); setInterval(() => {}, 1000)`,
      { ownProcessGroup: true },
    );
    const grandchildPid = await waitForLine(parent, (line) => (/^\d+$/.test(line) ? Number(line) : undefined), {
      timeoutMs: 10_000,
      what: 'its child pid',
    });
    expect(isAlive(grandchildPid)).toBe(true);
    expect(await parent.stop({ graceMs: 10_000 })).toBe(0);
    await expect.poll(() => isAlive(grandchildPid), { timeout: 5_000 }).toBe(false);
  });
});

describe('dotenvLine', () => {
  it('quotes a value so that neither dotenv nor its $-expansion changes it', () => {
    expect(dotenvLine('SECRET', 'a1b2c3')).toBe("SECRET='a1b2c3'");
    // dotenv-expand turns `\$` back into `$` and expands no `$` that follows a backslash.
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a literal ${PATH} is the case under test
    expect(dotenvLine('SECRET', "it's $HOME and \\${PATH} # not a comment")).toBe("SECRET=`it's \\$HOME and \\\\${PATH} # not a comment`");
  });

  it('refuses what an env file cannot carry', () => {
    expect(() => dotenvLine('SECRET', 'two\nlines')).toThrow(/SECRET.*line break/);
    expect(() => dotenvLine('SECRET', "both ' and `")).toThrow(/SECRET/);
    expect(() => dotenvLine('NOT A NAME', 'x')).toThrow(/not a variable name/);
  });
});
