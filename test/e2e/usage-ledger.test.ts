/**
 * The usage ledger on the real stack (`startStack()`, as `npm start`): real sidecars report usage, wrangler dev's
 * local Queue delivers the events to the worker's consumer, D1 (migrated by the launcher) holds them, and
 * /admin/usage and /v1/usage answer exactly what the clients were told.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Stack } from '../../cli/commands/dev.ts';
import type { Usage } from '../../shared/api.ts';
import { readSseEvents, SSE_DONE } from '../../shared/sse.ts';
import { type UsageReport, UsageReportSchema } from '../../shared/usage.ts';
import { startTestStack } from '../support/stack-fixture.ts';

let stack: Stack;

beforeAll(async () => {
  stack = await startTestStack({ regions: ['eu-west'] });
}, 300_000);

afterAll(async () => {
  await stack?.stop();
});

async function chat(body: Record<string, unknown>): Promise<Usage> {
  const response = await fetch(`${stack.edgeUrl}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${stack.apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'mistral-tiny', messages: [{ role: 'user', content: 'Hello there' }], max_tokens: 6, ...body }),
  });
  expect(response.status).toBe(200);
  if (!body.stream) return ((await response.json()) as { usage: Usage }).usage;
  let usage: Usage | undefined;
  for await (const event of readSseEvents(response.body as ReadableStream<Uint8Array>)) {
    if (event.data === SSE_DONE) break;
    const chunk = JSON.parse(event.data) as { usage?: Usage | null };
    if (chunk.usage) usage = chunk.usage;
  }
  if (!usage) throw new Error('the stream carried no usage');
  return usage;
}

/** A report once the queue has delivered `requests` events (its batches wait up to 5 s); the last one after 60 s. */
async function reportOnceDelivered(path: string, authorization: string, requests: number): Promise<UsageReport> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const response = await fetch(`${stack.edgeUrl}${path}`, { headers: { authorization } });
    expect(response.status).toBe(200);
    const report = UsageReportSchema.parse(await response.json());
    if (report.data.reduce((sum, row) => sum + row.requests, 0) >= requests || Date.now() > deadline) return report;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

describe('the usage ledger on the real stack', () => {
  it('holds exactly the usage the clients received, for the admin and for the key itself', async () => {
    const received = [await chat({}), await chat({ stream: true }), await chat({ temperature: 0.9 })];
    const sum = (field: 'prompt_tokens' | 'completion_tokens') => received.reduce((total, usage) => total + usage[field], 0);

    const admin = await reportOnceDelivered('/admin/usage?group_by=key,model', `Bearer ${stack.adminSecret}`, 3);
    expect(admin.data).toEqual([
      expect.objectContaining({
        model: 'mistral-tiny',
        requests: 3,
        prompt_tokens: sum('prompt_tokens'),
        completion_tokens: sum('completion_tokens'),
        error_requests: 0,
      }),
    ]);
    expect(admin.data[0]?.cost_micros).toBeGreaterThan(0);

    const own = await reportOnceDelivered('/v1/usage?group_by=day', `Bearer ${stack.apiKey}`, 3);
    expect(own.data).toEqual([expect.objectContaining({ day: new Date().toISOString().slice(0, 10), requests: 3 })]);
  });
});
