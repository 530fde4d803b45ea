/**
 * Builds the edge app for a test: real Hono app, real KV (miniflare, isolated per test file), the
 * test's bindings from wrangler.toml + edge/vitest.config.ts, and fake sidecars as its fetch.
 */
import { applyD1Migrations, createExecutionContext, type D1Migration, waitOnExecutionContext } from 'cloudflare:test';
import { env } from 'cloudflare:workers';
import { onTestFinished } from 'vitest';
import { createApp } from '../../edge/app.ts';
import { type CreateKeyRequest, createKey, keyPeppersFrom } from '../../edge/auth/index.ts';
import type { EdgeBindings } from '../../edge/env.ts';
import type { Usage } from '../../shared/api.ts';
import type { UsageEvent } from '../../shared/usage.ts';
import { createFakeSidecars } from './fake-sidecar.ts';

/** The usage ledger's D1 database (bound by wrangler.toml), for tests that read or write it directly. */
export function ledgerDb(): D1Database {
  if (!env.USAGE_DB) throw new Error('wrangler.toml binds USAGE_DB');
  return env.USAGE_DB;
}

/** Applies migrations/ (passed in by edge/vitest.config.ts) to the ledger database: call from beforeAll. */
export async function migrateLedger(): Promise<void> {
  await applyD1Migrations(ledgerDb(), (env as unknown as { TEST_MIGRATIONS: D1Migration[] }).TEST_MIGRATIONS);
}

export const SIDECAR_SECRET = 'test-sidecar-secret';
export const ADMIN_SECRET = 'test-admin-secret';

/** Two regions as in wrangler.toml, on hostnames only the fake fetch knows. */
export const REGIONS = {
  'eu-west': { url: 'http://eu-west.sidecar.test', lat: 48.86, lon: 2.35, continent: 'EU' },
  'us-east': { url: 'http://us-east.sidecar.test', lat: 39.04, lon: -77.49, continent: 'NA' },
} as const;

export const PARIS = { latitude: '48.85', longitude: '2.35', continent: 'EU', country: 'FR' };
export const NEW_YORK = { latitude: '40.71', longitude: '-74.00', continent: 'NA', country: 'US' };

export interface SetupOptions {
  /** Wraps the fake sidecars' fetch, e.g. to play an upstream API on another host. */
  wrapFetch?: (sidecarFetch: typeof fetch) => typeof fetch;
  /** Use the app's own metering (tokens charged to the RateLimiter) instead of recording usage here. */
  realMetering?: boolean;
}

export function setup(overrides: Partial<EdgeBindings> & Record<string, unknown> = {}, options: SetupOptions = {}) {
  const sidecars = createFakeSidecars(
    Object.fromEntries(Object.entries(REGIONS).map(([region, { url }]) => [region, url])),
    SIDECAR_SECRET,
  );
  const usage: Usage[] = [];
  // The ledger's queue, captured: tests hand the events to the consumer themselves (test/edge/usage*.test.ts),
  // so no batch is delivered behind a test's back.
  const usageEvents: UsageEvent[] = [];
  const usageQueue = {
    send: async (event: UsageEvent) => {
      usageEvents.push(event);
    },
    sendBatch: async (batch: Iterable<MessageSendRequest<UsageEvent>>) => {
      for (const message of batch) usageEvents.push(message.body);
    },
  } as unknown as Queue<UsageEvent>;
  const app = createApp({
    fetch: options.wrapFetch ? options.wrapFetch(sidecars.fetch) : sidecars.fetch,
    recordUsage: options.realMetering
      ? undefined
      : async (_c, recorded) => {
          usage.push(recorded);
        },
  });
  const bindings: EdgeBindings = {
    ...env,
    SIDECARS: JSON.stringify(
      Object.entries(REGIONS).map(([region, config]) => ({ region, models: ['mistral-tiny', 'mistral-small'], ...config })),
    ),
    UPSTREAMS: '{}',
    CORS_ORIGINS: '*',
    SIROCCO_SIDECAR_SECRET: SIDECAR_SECRET,
    SIROCCO_ADMIN_SECRET: ADMIN_SECRET,
    KEEP_ALIVE_MS: '10000',
    FIRST_BYTE_TIMEOUT_MS: '2000',
    COMPLETION_TIMEOUT_MS: '2000',
    CIRCUIT_FAILURE_THRESHOLD: '2',
    CIRCUIT_COOLDOWN_MS: '200',
    HEALTH_TTL_MS: '60000',
    USAGE_QUEUE: usageQueue,
    ...overrides,
  };

  // Work a request leaves to waitUntil (access and usage logs, written after the response) must
  // finish inside its test: a log line still in flight when the file's worker shuts down fails the
  // run ("Closing rpc while onUserConsoleLog was pending"). A stream a test never read cannot
  // finish, hence the bound. Each request settles when its own test finishes (an afterEach
  // registered here would miss the last test of a file whose tests call setup() themselves).
  const settle = (ctx: ExecutionContext) =>
    Promise.race([waitOnExecutionContext(ctx).catch(() => undefined), new Promise((resolve) => setTimeout(resolve, 2_000))]);

  /** Sends a request through the worker; `cf` sets the client's location. */
  async function send(path: string, init: RequestInit & { cf?: Record<string, string> } = {}) {
    const { cf, ...rest } = init;
    const request = new Request(`https://edge.test${path}`, { ...rest, cf } as RequestInit);
    const ctx = createExecutionContext();
    onTestFinished(async () => void (await settle(ctx)));
    const response = await app.fetch(request, bindings, ctx);
    return Object.assign(response, { settled: () => waitOnExecutionContext(ctx) });
  }

  async function apiKey(request: Partial<CreateKeyRequest> = {}) {
    const { key } = await createKey(bindings.API_KEYS, { tenant: 'acme', ...request }, keyPeppersFrom(bindings));
    return key;
  }

  async function chat(key: string, body: Record<string, unknown>, init: RequestInit & { cf?: Record<string, string> } = {}) {
    return send('/v1/chat/completions', {
      method: 'POST',
      ...init,
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...(init.headers as Record<string, string>) },
      body: JSON.stringify({ model: 'mistral-tiny', messages: [{ role: 'user', content: 'Hi' }], ...body }),
    });
  }

  return { app, bindings, sidecars, usage, usageEvents, send, apiKey, chat };
}

/** Reads an SSE body to the end and returns its raw frames (`data: …`, `: keep-alive`). */
export async function readFrames(response: Response): Promise<string[]> {
  const text = await response.text();
  return text.split('\n\n').filter((frame) => frame !== '');
}
