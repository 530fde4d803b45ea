/**
 * `sirocco usage` as an operator runs it, against a real `wrangler dev` edge: its local Queue delivers the usage
 * events to the worker's own consumer, which writes the local D1 database that `wrangler d1 migrations apply
 * --local` prepared (as `npm start` does). Chat requests go to a model routed through UPSTREAMS to a small HTTP
 * server in this process playing a Mistral-compatible API, so no sidecar (and no model) is needed.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyLocalD1Migrations, freePort, type ManagedProcess, spawnWranglerDev, waitUntilReady } from '../../cli/processes.ts';
import type { UsageRow } from '../../shared/usage.ts';
import { type CliResult, runSiroccoWith } from '../support/cli.ts';

const ADMIN_SECRET = 'usage-cli-test-admin-secret';
/** What the fake upstream reports for every answer: 1000 prompt + 2000 completion tokens. */
const UPSTREAM_USAGE = { prompt_tokens: 1000, completion_tokens: 2000, total_tokens: 3000 };
// mistral-medium at 2.5 / 7.5 € per million: 1000 × 2.5 + 2000 × 7.5 = 17,500 µ€ per request.
const COST_PER_REQUEST = 17_500;

let edgeUrl: string;
let wrangler: ManagedProcess | undefined;
let upstream: Server | undefined;
let workdir: string;

function sirocco(args: string[], env: Record<string, string> = { SIROCCO_ADMIN_SECRET: ADMIN_SECRET }): Promise<CliResult> {
  return runSiroccoWith({ home: join(workdir, 'home'), env }, ...args);
}

beforeAll(async () => {
  workdir = await mkdtemp(join(tmpdir(), 'sirocco-usage-cli-'));
  upstream = createServer((request, response) => {
    request.resume();
    request.on('end', () => {
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end(
        JSON.stringify({
          id: 'cmpl-upstream',
          object: 'chat.completion',
          created: 1,
          model: 'mistral-medium',
          choices: [{ index: 0, message: { role: 'assistant', content: 'Hello' }, finish_reason: 'stop' }],
          usage: UPSTREAM_USAGE,
        }),
      );
    });
  });
  await new Promise<void>((resolve) => upstream?.listen(0, '127.0.0.1', resolve));
  const upstreamUrl = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;

  const persistTo = join(workdir, 'state');
  await applyLocalD1Migrations({ persistTo });
  const port = await freePort();
  edgeUrl = `http://127.0.0.1:${port}`;
  wrangler = await spawnWranglerDev({
    port,
    persistTo,
    logLevel: 'error',
    inspectorPort: await freePort(),
    vars: { UPSTREAMS: JSON.stringify({ 'mistral-medium': { url: upstreamUrl, apiKeySecret: 'UPSTREAM_API_KEY' } }) },
    secrets: { SIROCCO_ADMIN_SECRET: ADMIN_SECRET, UPSTREAM_API_KEY: 'upstream-test-key' },
  });
  await waitUntilReady(wrangler, `${edgeUrl}/health`, { timeoutMs: 90_000 });
}, 150_000);

afterAll(async () => {
  await wrangler?.stop({ graceMs: 5_000 });
  await new Promise((resolve) => upstream?.close(resolve));
  await rm(workdir, { recursive: true, force: true });
});

async function createKey(tenant: string): Promise<{ key: string; id: string }> {
  const response = await fetch(`${edgeUrl}/admin/keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_SECRET}`, 'content-type': 'application/json' },
    body: JSON.stringify({ tenant }),
  });
  expect(response.status).toBe(201);
  return (await response.json()) as { key: string; id: string };
}

async function chat(key: string): Promise<void> {
  const response = await fetch(`${edgeUrl}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'mistral-medium', messages: [{ role: 'user', content: 'Hi' }] }),
  });
  expect(response.status).toBe(200);
  expect(((await response.json()) as { usage: unknown }).usage).toEqual(UPSTREAM_USAGE);
}

/** `sirocco usage --json` until the queue has delivered `requests` events (its batches wait up to 5 s). */
async function usageRowsOnceDelivered(args: string[], requests: number): Promise<UsageRow[]> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const result = await sirocco(['usage', '--url', edgeUrl, '--json', ...args]);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const rows = JSON.parse(result.stdout) as UsageRow[];
    if (rows.reduce((sum, row) => sum + row.requests, 0) >= requests || Date.now() > deadline) return rows;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

describe('sirocco usage', () => {
  it('prints the rows wrangler dev’s queue consumer wrote to D1, as JSON and as a table; keys list shows the spend', async () => {
    const acme = await createKey('acme');
    const globex = await createKey('globex');
    for (const key of [acme.key, acme.key, globex.key]) await chat(key);

    const byKey = await usageRowsOnceDelivered([], 3);
    expect(byKey).toEqual([
      expect.objectContaining({
        key_id: acme.id,
        tenant: 'acme',
        model: 'mistral-medium',
        requests: 2,
        prompt_tokens: 2000,
        cost_micros: 2 * COST_PER_REQUEST,
      }),
      expect.objectContaining({ key_id: globex.id, tenant: 'globex', requests: 1, completion_tokens: 2000, cost_micros: COST_PER_REQUEST }),
    ]);

    const today = new Date().toISOString().slice(0, 10);
    const byTenantDay = await sirocco(['usage', '--url', edgeUrl, '--json', '--group-by', 'tenant,day', '--from', today, '--to', today]);
    expect(JSON.parse(byTenantDay.stdout)).toEqual([
      expect.objectContaining({ key_id: null, tenant: 'acme', model: null, day: today, requests: 2 }),
      expect.objectContaining({ key_id: null, tenant: 'globex', model: null, day: today, requests: 1 }),
    ]);

    const table = await sirocco(['usage', '--url', edgeUrl, '--group-by', 'key']);
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/amounts in EUR/);
    expect(table.stdout).toContain(acme.id);
    expect(table.stdout).toContain('0.035000');

    const keys = await sirocco(['keys', 'list', '--url', edgeUrl]);
    const acmeLine = keys.stdout.split('\n').find((line) => line.startsWith(acme.id));
    expect(acmeLine).toMatch(/last_used=\d{4}-\d{2}-\d{2}T/);
    expect(acmeLine).toContain('spend_month=0.035000');
  });

  it('names the flag of a bad date or grouping, and says when the edge is unreachable or the secret is wrong', async () => {
    const badDate = await sirocco(['usage', '--url', edgeUrl, '--from', '2026-02-30']);
    expect(badDate.code).toBe(2);
    expect(badDate.stderr).toMatch(/--from must be a UTC day YYYY-MM-DD, got "2026-02-30"/);
    const reversed = await sirocco(['usage', '--url', edgeUrl, '--from', '2026-12-03', '--to', '2026-12-01']);
    expect(reversed.code).toBe(2);
    expect(reversed.stderr).toMatch(/--from \(2026-12-03\) is after --to/);
    const badGroup = await sirocco(['usage', '--url', edgeUrl, '--group-by', 'region']);
    expect(badGroup.code).toBe(2);
    expect(badGroup.stderr).toMatch(/--group-by takes key, tenant, model, day/);

    const closedPort = await freePort();
    const unreachable = await sirocco(['usage', '--url', `http://127.0.0.1:${closedPort}`]);
    expect(unreachable.code).toBe(1);
    expect(unreachable.stderr).toMatch(/cannot reach the edge at http:\/\/127\.0\.0\.1:\d+/);

    const wrongSecret = await sirocco(['usage', '--url', edgeUrl], { SIROCCO_ADMIN_SECRET: 'not-the-secret' });
    expect(wrongSecret.code).toBe(1);
    expect(wrongSecret.stderr).toMatch(/HTTP 401.*invalid admin secret/);

    const help = await sirocco(['usage', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('usage: sirocco usage --url URL [--from D] [--to D] [--group-by key|tenant|model|day] [--json]');
  });
});
