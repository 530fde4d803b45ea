/**
 * The real local stack (two sidecar processes and `wrangler dev`) under attack and failure, each case its own
 * test: a prompt too long for the model leaves every circuit closed and other keys served; a hung sidecar
 * (SIGSTOP) ends its stream with an error frame within the idle timeout, and a non-stream request within the
 * edge's deadlines; a client that leaves a non-stream request frees the sidecar's slot within a second (see the
 * note on that test);
 * concurrent requests never overrun a key's token budget; a replayed signed sidecar request is refused. (A
 * sidecar killed mid-stream: supervised-stack.test.ts; an expert file corrupted after its first use:
 * test/sidecar/expert-paging.test.ts.)
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Stack } from '../../cli/commands/dev.ts';
import { ChatCompletionResponseSchema } from '../../shared/api.ts';
import { HEADERS, LoadReportSchema, SIDECAR_PATHS } from '../../shared/protocol.ts';
import { signRequest } from '../../shared/signing.ts';
import { classifySseEvent, readSseEvents } from '../../shared/sse.ts';
import { completionTokensServed, reportFigure, signedSidecarGet, startTestStack } from '../support/stack-fixture.ts';

const IDLE_TIMEOUT_MS = 3_000;
const FIRST_BYTE_TIMEOUT_MS = 5_000;

let stack: Stack;
beforeAll(async () => {
  stack = await startTestStack({
    edgeVars: { STREAM_IDLE_TIMEOUT_MS: String(IDLE_TIMEOUT_MS), FIRST_BYTE_TIMEOUT_MS: String(FIRST_BYTE_TIMEOUT_MS) },
  });
}, 300_000);
afterAll(async () => {
  await stack?.stop();
});

const report = (line: string) => reportFigure('chaos', line);

function chat(body: Record<string, unknown>, options: { key?: string; region?: string; signal?: AbortSignal } = {}): Promise<Response> {
  return fetch(`${stack.edgeUrl}/v1/chat/completions`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${options.key ?? stack.apiKey}`,
      'content-type': 'application/json',
      ...(options.region ? { [HEADERS.region]: options.region } : {}),
    },
    body: JSON.stringify({ model: 'mistral-tiny', messages: [{ role: 'user', content: 'Tell me a story' }], ...body }),
    signal: options.signal,
  });
}

async function createKey(body: Record<string, unknown>): Promise<string> {
  const response = await fetch(`${stack.edgeUrl}/admin/keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${stack.adminSecret}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  expect(response.status).toBeLessThan(300);
  const { key } = (await response.json()) as { key: string };
  return key;
}

async function circuits(): Promise<string[]> {
  const health = (await (await fetch(`${stack.edgeUrl}/health`)).json()) as { regions: Array<{ circuit: string }> };
  return health.regions.map((region) => region.circuit);
}

async function activeSequences(region: string): Promise<number> {
  return LoadReportSchema.parse(await (await signedSidecarGet(stack, region, '/ready')).json()).activeSequences;
}

describe('chaos on the local stack', () => {
  it('a prompt longer than the context, sent again and again, is a 400 and never opens a circuit', async () => {
    const longPrompt = 'hello '.repeat(150_000); // ≈ 900 KB, under the 1 MiB body limit; ≈ 300k tokens
    for (let attempt = 0; attempt < 4; attempt++) {
      const response = await chat({ max_tokens: 4, messages: [{ role: 'user', content: longPrompt }] });
      expect(response.status).toBe(400);
      expect(((await response.json()) as { message: string }).message).toMatch(/context length/);
    }
    expect(await circuits()).toEqual(['closed', 'closed']);
    const otherKey = await createKey({ tenant: 'chaos-other' });
    const started = performance.now();
    const served = await chat({ max_tokens: 4 }, { key: otherKey });
    expect(served.status).toBe(200);
    report(`after 4 over-long prompts another key was served in ${Math.round(performance.now() - started)} ms`);
  }, 120_000);

  it('a hung sidecar (SIGSTOP) mid-stream ends the stream with one error frame within the idle timeout', async () => {
    const region = 'eu-west';
    const { pid } = stack.sidecarProcess(region);
    expect(pid).toBeDefined();
    const response = await chat({ stream: true, max_tokens: 2000 }, { region });
    expect(response.status).toBe(200);
    if (!response.body) throw new Error('a stream without a body');
    let stoppedAt = 0;
    const frames: string[] = [];
    try {
      for await (const event of readSseEvents(response.body)) {
        const frame = classifySseEvent(event);
        frames.push(frame.kind);
        if (frame.kind === 'chunk' && stoppedAt === 0) {
          process.kill(pid as number, 'SIGSTOP');
          stoppedAt = performance.now();
        }
      }
    } finally {
      process.kill(pid as number, 'SIGCONT');
    }
    const endedAfterMs = performance.now() - stoppedAt;
    report(`the stream of a stopped sidecar ended ${Math.round(endedAfterMs)} ms after SIGSTOP (idle timeout ${IDLE_TIMEOUT_MS} ms)`);
    expect(frames.filter((kind) => kind === 'error')).toHaveLength(1);
    expect(frames).not.toContain('done');
    expect(endedAfterMs).toBeLessThan(IDLE_TIMEOUT_MS + 3_000);
  }, 120_000);

  it('a hung sidecar (SIGSTOP) during a non-stream request ends it within the edge deadlines, not after minutes', async () => {
    const region = 'eu-west';
    const { pid } = stack.sidecarProcess(region);
    expect(pid).toBeDefined();
    const otherBefore = await completionTokensServed(stack, 'us-east');
    const pending = chat({ max_tokens: 2000 }, { region });
    // Stop it while it generates. Whether its first token had reached the edge by then decides the clean end:
    // after it, a 504 within the idle timeout; before it, failover to the other region within the first-byte timeout.
    await expect.poll(() => activeSequences(region), { timeout: 30_000, interval: 20 }).toBe(1);
    await new Promise((resolve) => setTimeout(resolve, 300));
    process.kill(pid as number, 'SIGSTOP');
    const stoppedAt = performance.now();
    let response: Response;
    try {
      response = await pending;
    } finally {
      process.kill(pid as number, 'SIGCONT');
    }
    const answeredAfterMs = performance.now() - stoppedAt;
    const body = (await response.json()) as { type?: string; object?: string };
    report(`a non-stream request to a stopped sidecar was answered ${response.status} ${Math.round(answeredAfterMs)} ms after SIGSTOP`);
    if (response.status === 504) {
      expect(body.type).toBe('timeout');
      expect(answeredAfterMs).toBeLessThan(IDLE_TIMEOUT_MS + 3_000);
    } else {
      expect(response.status).toBe(200);
      expect(body.object).toBe('chat.completion');
      expect(answeredAfterMs).toBeLessThan(FIRST_BYTE_TIMEOUT_MS + 10_000);
      expect(await completionTokensServed(stack, 'us-east')).toBeGreaterThan(otherBefore); // served by failover
    }
  }, 120_000);

  // The edge's half of a non-stream abort (request.signal → the sidecar fetch) is tested in workerd
  // (test/edge/routing.test.ts). Under `wrangler dev` it cannot happen: wrangler's local proxy worker forwards
  // requests without enable_request_signal, so a client that leaves a non-stream request is never seen by the
  // worker (measured: the slot freed only when the generation ended, 9 s later). Deployed workers do see it.
  it("a client that leaves a sidecar's non-stream request frees its slot within a second", async () => {
    const region = 'us-east';
    const sidecar = stack.sidecars.find((candidate) => candidate.region === region);
    if (!sidecar) throw new Error(`no sidecar in ${region}`);
    await expect.poll(() => activeSequences(region), { timeout: 30_000 }).toBe(0);
    const body = JSON.stringify({ model: 'mistral-tiny', messages: [{ role: 'user', content: 'Go on and on' }], max_tokens: 4000 });
    const headers = await signRequest({ secret: stack.sidecarSecret, method: 'POST', path: SIDECAR_PATHS.chatCompletions, body });
    const controller = new AbortController();
    const pending = fetch(`${sidecar.url}${SIDECAR_PATHS.chatCompletions}`, {
      method: 'POST',
      headers: { ...headers, 'content-type': 'application/json' },
      body,
      signal: controller.signal,
    }).catch((error: unknown) => error);
    await expect.poll(() => activeSequences(region), { timeout: 30_000, interval: 50 }).toBe(1);
    controller.abort();
    const abortedAt = performance.now();
    await expect.poll(() => activeSequences(region), { timeout: 1_000, interval: 25 }).toBe(0);
    report(`the slot was free ${Math.round(performance.now() - abortedAt)} ms after the client left`);
    expect(await pending).toBeInstanceOf(Error);
  }, 60_000);

  it('100 concurrent requests on a 100-token budget are admitted only as far as the budget goes', async () => {
    const key = await createKey({ tenant: 'chaos-budget', tpm: 100, rpm: 1_000 });
    const responses = await Promise.all(Array.from({ length: 100 }, () => chat({ max_tokens: 10 }, { key })));
    const admitted = responses.filter((response) => response.status === 200);
    expect(responses.every((response) => response.status === 200 || response.status === 429)).toBe(true);
    const spent = (await Promise.all(admitted.map(async (response) => ChatCompletionResponseSchema.parse(await response.json())))).reduce(
      (sum, body) => sum + body.usage.total_tokens,
      0,
    );
    await Promise.all(responses.filter((response) => response.status !== 200).map((response) => response.body?.cancel()));
    report(`${admitted.length} of 100 admitted, ${spent} tokens spent of a 100-token budget`);
    expect(admitted.length).toBeGreaterThan(0);
    expect(spent).toBeLessThanOrEqual(100);
  }, 120_000);

  it('a replayed signed sidecar request is refused', async () => {
    const sidecar = stack.sidecars[0];
    if (!sidecar) throw new Error('no sidecar');
    const body = JSON.stringify({ model: 'mistral-tiny', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2 });
    const headers = await signRequest({ secret: stack.sidecarSecret, method: 'POST', path: SIDECAR_PATHS.chatCompletions, body });
    const send = () =>
      fetch(`${sidecar.url}${SIDECAR_PATHS.chatCompletions}`, {
        method: 'POST',
        headers: { ...headers, 'content-type': 'application/json' },
        body,
      });
    const first = await send();
    expect(first.status).toBe(200);
    ChatCompletionResponseSchema.parse(await first.json());
    const replay = await send();
    expect(replay.status).toBe(401);
    expect(((await replay.json()) as { message: string }).message).toMatch(/replay/);
  });
});
