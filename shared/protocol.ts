/**
 * The edge ↔ sidecar protocol beyond the public Mistral API: the sidecar's load report, the header
 * names both tiers use, the request-id format, the environment variables and the default ports. Web
 * APIs only (runs in Workers and Node 20).
 */
import * as z from 'zod';

/** `GET /ready` body: 200 with `ready: true` once models are loaded, 503 with `ready: false` otherwise. */
export const LoadReportSchema = z.object({
  ready: z.boolean(),
  region: z.string(),
  models: z.array(z.string()),
  queueDepth: z.number().int().nonnegative(),
  activeSequences: z.number().int().nonnegative(),
  maxBatch: z.number().int().nonnegative(),
  maxQueue: z.number().int().nonnegative(),
  tokensPerSecond: z.number().nonnegative(),
});
export type LoadReport = z.infer<typeof LoadReportSchema>;

/** Header names shared by the edge and the sidecar (lower case, as `Headers` normalises them). */
export const HEADERS = {
  requestId: 'x-request-id',
  timestamp: 'x-sirocco-timestamp',
  signature: 'x-sirocco-signature',
  /** A fresh random value per signed request, part of what is signed: the sidecar accepts each nonce once. */
  nonce: 'x-sirocco-nonce',
  /** A client's preferred region (the AI SDK provider's `region` option); failover still applies. */
  region: 'x-sirocco-region',
} as const;

/**
 * The one request-id format both tiers accept and echo, so one request's log lines match across them:
 * 8–128 letters, digits and `.`, `_`, `:`, `-` (room for ids such as `req.2026:abc`), and nothing
 * (spaces, quotes, `=`) that could forge a log field.
 */
const REQUEST_ID_FORMAT = /^[A-Za-z0-9._:-]{8,128}$/;

export function isValidRequestId(id: string): boolean {
  return REQUEST_ID_FORMAT.test(id);
}

/** A fresh id in the format (a UUID). */
export function newRequestId(): string {
  return crypto.randomUUID();
}

/** The caller's `x-request-id` when it is in the format, otherwise a fresh one. */
export function requestIdFrom(incoming: string | null | undefined): string {
  return incoming && isValidRequestId(incoming) ? incoming : newRequestId();
}

/** Sidecar paths the edge calls. */
export const SIDECAR_PATHS = {
  health: '/health',
  ready: '/ready',
  chatCompletions: '/v1/chat/completions',
} as const;

/** Environment variables and wrangler secrets, by role. */
export const ENV = {
  /** HMAC secret shared by the edge (wrangler secret) and every sidecar. */
  sidecarSecret: 'SIROCCO_SIDECAR_SECRET',
  /** Guards the edge's admin routes (`/admin/keys`). */
  adminSecret: 'SIROCCO_ADMIN_SECRET',
  /** The API key value `npm start` provisions for local use. */
  devKey: 'SIROCCO_DEV_KEY',
  /** Edge port for `npm start`. */
  port: 'PORT',
  /** Where `npm start` keeps its generated secrets and dev key, and `sirocco keys` looks (default <repo>/.dev.vars). */
  devVars: 'SIROCCO_DEV_VARS',
  /** Bearer token a Prometheus scraper sends to a sidecar's /metrics instead of a signature. */
  metricsToken: 'SIROCCO_METRICS_TOKEN',
  /** Where demo models and converted stores live (default ~/.cache/sirocco). */
  home: 'SIROCCO_HOME',
} as const;

export const DEFAULT_PORTS = { edge: 8787, sidecar: 8080 } as const;

/** Largest clock skew the sidecar accepts on a signed request. */
export const SIGNATURE_MAX_SKEW_SECONDS = 60;
