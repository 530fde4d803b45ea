/**
 * The edge's configuration from wrangler vars, parsed with zod and cached per raw string (vars are
 * fixed for an isolate's life, so each is parsed once). A bad value is a deployment error: it fails
 * the request with a message naming the variable and the field.
 */
import * as z from 'zod';
import { LOCAL_MODEL_IDS } from '../../shared/api.ts';
import type { EdgeBindings } from '../env.ts';
import { EdgeError } from '../errors.ts';

export const SidecarConfigSchema = z.strictObject({
  region: z.string().min(1),
  url: z.url({ protocol: /^https?$/ }),
  models: z.array(z.enum(LOCAL_MODEL_IDS)).min(1),
  lat: z.number().min(-90).max(90).optional(),
  lon: z.number().min(-180).max(180).optional(),
  /** Cloudflare continent code (EU, NA, SA, AS, AF, OC, AN), used when a client has no coordinates. */
  continent: z.string().length(2).optional(),
  /** ISO country codes this region serves first. */
  countries: z.array(z.string().length(2)).optional(),
});
export type SidecarConfig = z.infer<typeof SidecarConfigSchema>;

export const UpstreamConfigSchema = z.strictObject({
  /** Base URL of a Mistral-compatible API; `/v1/chat/completions` is appended. */
  url: z.url({ protocol: /^https?$/ }),
  /** Name of the secret binding holding the operator's API key. */
  apiKeySecret: z.string().min(1),
  /** Model name sent upstream; defaults to the name the client used. */
  model: z.string().min(1).optional(),
});
export type UpstreamConfig = z.infer<typeof UpstreamConfigSchema>;

export interface Tunables {
  /** Streams: how long to wait for a region's first SSE event before failing over. */
  firstByteTimeoutMs: number;
  /** Non-stream requests: the sidecar answers after the whole generation, so the wait is longer. */
  completionTimeoutMs: number;
  /** Idle gap after which a `: keep-alive` comment is sent on a stream. */
  keepAliveMs: number;
  /** Streams: silence from the upstream (no data event; comments do not count) that ends the stream with a timeout frame. */
  streamIdleTimeoutMs: number;
  /** How old a /ready probe result may be before it is refreshed in the background. */
  healthTtlMs: number;
  /** Consecutive failures that open a sidecar's circuit. */
  circuitFailureThreshold: number;
  /** How long an open circuit stays open before a trial request (half-open). */
  circuitCooldownMs: number;
}

export const DEFAULT_TUNABLES: Tunables = {
  firstByteTimeoutMs: 60_000,
  completionTimeoutMs: 300_000,
  keepAliveMs: 10_000,
  streamIdleTimeoutMs: 30_000,
  healthTtlMs: 10_000,
  circuitFailureThreshold: 3,
  circuitCooldownMs: 15_000,
};

function configError(variable: string, problem: string): EdgeError {
  return new EdgeError('internal_error', `Edge configuration error in ${variable}: ${problem}`);
}

function parseJsonVar<T>(variable: string, raw: string, schema: z.ZodType<T>): T {
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch (error) {
    throw configError(variable, `not valid JSON (${error instanceof Error ? error.message : String(error)})`);
  }
  const result = schema.safeParse(json);
  if (!result.success) throw configError(variable, z.prettifyError(result.error).replaceAll('\n', ' '));
  return result.data;
}

const cache = new Map<string, unknown>();
function memo<T>(key: string, build: () => T): T {
  if (!cache.has(key)) cache.set(key, build());
  return cache.get(key) as T;
}

const SidecarListSchema = z.array(SidecarConfigSchema).superRefine((list, ctx) => {
  const seen = new Set<string>();
  for (const [index, sidecar] of list.entries()) {
    if (seen.has(sidecar.region))
      ctx.addIssue({ code: 'custom', path: [index, 'region'], message: `duplicate region "${sidecar.region}"` });
    seen.add(sidecar.region);
  }
});

export function sidecarsFrom(env: EdgeBindings): SidecarConfig[] {
  const raw = env.SIDECARS ?? '[]';
  return memo(`SIDECARS:${raw}`, () => parseJsonVar('SIDECARS', raw, SidecarListSchema));
}

export function upstreamsFrom(env: EdgeBindings): Record<string, UpstreamConfig> {
  const raw = env.UPSTREAMS ?? '{}';
  return memo(`UPSTREAMS:${raw}`, () => parseJsonVar('UPSTREAMS', raw, z.record(z.string(), UpstreamConfigSchema)));
}

/** `*` or a list of exact origins. */
export function corsOriginsFrom(env: EdgeBindings): '*' | string[] {
  const raw = (env.CORS_ORIGINS ?? '').trim();
  if (raw === '*') return '*';
  return raw
    .split(',')
    .map((origin) => origin.trim())
    .filter(Boolean);
}

function positiveInteger(variable: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined || raw.trim() === '') return fallback;
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < 1) throw configError(variable, `must be a positive integer, got "${raw}"`);
  return value;
}

export function tunablesFrom(env: EdgeBindings): Tunables {
  return {
    firstByteTimeoutMs: positiveInteger('FIRST_BYTE_TIMEOUT_MS', env.FIRST_BYTE_TIMEOUT_MS, DEFAULT_TUNABLES.firstByteTimeoutMs),
    completionTimeoutMs: positiveInteger('COMPLETION_TIMEOUT_MS', env.COMPLETION_TIMEOUT_MS, DEFAULT_TUNABLES.completionTimeoutMs),
    keepAliveMs: positiveInteger('KEEP_ALIVE_MS', env.KEEP_ALIVE_MS, DEFAULT_TUNABLES.keepAliveMs),
    streamIdleTimeoutMs: positiveInteger('STREAM_IDLE_TIMEOUT_MS', env.STREAM_IDLE_TIMEOUT_MS, DEFAULT_TUNABLES.streamIdleTimeoutMs),
    healthTtlMs: positiveInteger('HEALTH_TTL_MS', env.HEALTH_TTL_MS, DEFAULT_TUNABLES.healthTtlMs),
    circuitFailureThreshold: positiveInteger(
      'CIRCUIT_FAILURE_THRESHOLD',
      env.CIRCUIT_FAILURE_THRESHOLD,
      DEFAULT_TUNABLES.circuitFailureThreshold,
    ),
    circuitCooldownMs: positiveInteger('CIRCUIT_COOLDOWN_MS', env.CIRCUIT_COOLDOWN_MS, DEFAULT_TUNABLES.circuitCooldownMs),
  };
}

/** A price in currency units per million tokens, with at most six decimals (whole micro-units per million). */
const PricePerMillionSchema = z
  .number()
  .nonnegative()
  .max(1_000_000)
  .refine((price) => Math.abs(price * 1_000_000 - Math.round(price * 1_000_000)) < 1e-6, 'at most six decimals')
  .transform((price) => Math.round(price * 1_000_000));

export const PriceTableSchema = z.strictObject({
  /** ISO 4217 code of every price and amount (amounts are integer micro-units of it). */
  currency: z.string().regex(/^[A-Z]{3}$/, 'a three-letter currency code such as "EUR"'),
  /** Model name (a local id or an UPSTREAMS name) → price per million input and output tokens. */
  models: z.record(z.string().min(1), z.strictObject({ input: PricePerMillionSchema, output: PricePerMillionSchema })),
});

/** Prices as the ledger uses them: integer micro-units of `currency` per million tokens. */
export type PriceTable = { currency: string; models: Record<string, ModelPrice> };
export type ModelPrice = { inputMicrosPerMillion: number; outputMicrosPerMillion: number };

/** Mistral's 2023 list prices, per million input / output tokens. */
export const DEFAULT_PRICES = JSON.stringify({
  currency: 'EUR',
  models: {
    'mistral-tiny': { input: 0.14, output: 0.42 },
    'mistral-small': { input: 0.6, output: 1.8 },
    'mistral-medium': { input: 2.5, output: 7.5 },
  },
});

export function pricesFrom(env: EdgeBindings): PriceTable {
  const raw = env.PRICES ?? DEFAULT_PRICES;
  return memo(`PRICES:${raw}`, () => {
    const parsed = parseJsonVar('PRICES', raw, PriceTableSchema);
    const models = Object.fromEntries(
      Object.entries(parsed.models).map(([model, price]) => [
        model,
        { inputMicrosPerMillion: price.input, outputMicrosPerMillion: price.output },
      ]),
    );
    return { currency: parsed.currency, models };
  });
}

export const DEFAULT_USAGE_RETENTION_DAYS = 30;

/** Days raw usage events are kept (rollups are kept for good). */
export function usageRetentionDaysFrom(env: EdgeBindings): number {
  return positiveInteger('USAGE_RETENTION_DAYS', env.USAGE_RETENTION_DAYS, DEFAULT_USAGE_RETENTION_DAYS);
}

/** Reads a secret binding by name (upstream API keys are named in UPSTREAMS). */
export function secretFrom(env: EdgeBindings, name: string): string | undefined {
  const value = (env as unknown as Record<string, unknown>)[name];
  return typeof value === 'string' && value !== '' ? value : undefined;
}
