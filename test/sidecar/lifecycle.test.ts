/**
 * Lifecycle of a real `sirocco serve` process: SIGTERM stops admission (503, /ready not ready),
 * lets in-flight streams finish, and exits 0; streams that outlive the grace period end with an
 * error frame (never [DONE]); the per-request deadline ends long generations; a model folder that does not exist stops start-up with a message naming it.
 */
import { spawnSync } from 'node:child_process';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ChatCompletionResponseSchema } from '../../shared/api.ts';
import { LoadReportSchema } from '../../shared/protocol.ts';
import { readSseEvents } from '../../shared/sse.ts';
import { chatRequest, postChat, startSidecarProcess, TEST_HOME } from '../support/sidecar-process.ts';

describe('graceful shutdown', () => {
  it('finishes in-flight streams, refuses new work, then exits 0', async () => {
    const sidecar = await startSidecarProcess({ env: { SIROCCO_SHUTDOWN_GRACE_MS: '20000' } });
    const response = await postChat(sidecar.url, chatRequest('Finish me', { stream: true, max_tokens: 300, temperature: 0 }));
    const events = readSseEvents(response.body!);
    await events.next();
    await events.next();

    sidecar.child.kill('SIGTERM');
    await expect.poll(async () => (await fetch(`${sidecar.url}/ready`)).status).toBe(503);
    const report = LoadReportSchema.parse(await (await fetch(`${sidecar.url}/ready`)).json());
    expect(report.ready).toBe(false);
    const refused = await postChat(sidecar.url, chatRequest('Too late', { max_tokens: 2 }));
    expect(refused.status).toBe(503);
    expect(refused.headers.get('retry-after')).not.toBeNull();

    let sawDone = false;
    for await (const event of events) if (event.data === '[DONE]') sawDone = true;
    expect(sawDone).toBe(true);
    expect(await sidecar.exited).toBe(0);
    expect(sidecar.logs.map((line) => line.msg)).toEqual(expect.arrayContaining(['shutting down', 'stopped']));
  });

  it('cuts streams that outlive the grace period with an error frame, then exits 0', async () => {
    const sidecar = await startSidecarProcess({ env: { SIROCCO_SHUTDOWN_GRACE_MS: '200' } });
    const response = await postChat(sidecar.url, chatRequest('Never finish', { stream: true, max_tokens: 6000, temperature: 0 }));
    const events = readSseEvents(response.body!);
    await events.next();
    await events.next();
    sidecar.child.kill('SIGTERM');
    const rest: string[] = [];
    for await (const event of events) rest.push(event.data);
    expect(rest).not.toContain('[DONE]');
    expect(JSON.parse(rest.at(-1)!)).toMatchObject({ object: 'error', type: 'overloaded' });
    expect(await sidecar.exited).toBe(0);
  });
});

describe('per-request deadline', () => {
  it('ends a generation at the deadline with finish_reason "length", freeing the slot for the queue', async () => {
    const sidecar = await startSidecarProcess({
      args: ['--max-batch', '1', '--max-queue', '1'],
      env: { SIROCCO_REQUEST_TIMEOUT_MS: '1500' },
    });
    try {
      const started = Date.now();
      const long = postChat(sidecar.url, chatRequest('Talk forever', { max_tokens: 8000, temperature: 0 }));
      await expect.poll(async () => LoadReportSchema.parse(await (await fetch(`${sidecar.url}/ready`)).json()).activeSequences).toBe(1);
      const queued = postChat(sidecar.url, chatRequest('Waiting', { max_tokens: 2 }));

      const body = ChatCompletionResponseSchema.parse(await (await long).json());
      expect(body.choices[0]!.finish_reason).toBe('length');
      expect(body.usage.completion_tokens).toBeLessThan(8000);
      expect(Date.now() - started).toBeLessThan(10_000);
      expect((await queued).status).toBe(200);
    } finally {
      expect(await sidecar.stop()).toBe(0);
    }
  });
});

describe('start-up errors', () => {
  it('names a model folder that does not exist and exits non-zero', () => {
    const missing = join(TEST_HOME, 'no-such-model');
    const result = spawnSync(
      process.execPath,
      [resolve(import.meta.dirname, '../../bin/sirocco.mjs'), 'serve', '--port', '0', '--model', missing],
      {
        env: { ...process.env, SIROCCO_HOME: TEST_HOME },
        encoding: 'utf8',
        timeout: 60_000,
      },
    );
    expect(result.status).toBe(1);
    expect(result.stderr).toContain(missing);
  });

  it('rejects bad flags with exit code 2 and a message naming the flag', () => {
    const result = spawnSync(process.execPath, [resolve(import.meta.dirname, '../../bin/sirocco.mjs'), 'serve', '--max-batch', 'lots'], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(result.status).toBe(2);
    expect(result.stderr).toContain('--max-batch');
  });
});
