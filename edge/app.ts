/**
 * The edge app: middleware order and routes. Every error, from any layer, becomes Mistral's error
 * body in `onError` (the one place), and every response carries `x-request-id`.
 *
 *   request id → access log → CORS → body limit
 *   GET  /health                         (public)
 *   GET  /v1/models, /v1/models/:id      API key
 *   POST /v1/chat/completions            API key → validate → route → rate limit → spend caps → cache → forward
 *   GET  /v1/usage                       API key (the key's own usage)
 *   /admin/keys (POST, GET, PATCH /:id, DELETE /:id), /admin/usage, /admin/usage/events,
 *   /admin/tenants, PUT /admin/tenants/:tenant/caps   admin secret
 *   GET  /metrics                        admin secret (Prometheus text; counters kept per isolate)
 */
import { type Context, Hono } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { HTTPException } from 'hono/http-exception';
import type { Usage } from '../shared/api.ts';
import { errorBody, type MistralErrorBody, retryAfterHeaders } from '../shared/errors.ts';
import { ApiKeyCache, adminAuth, apiKeyAuth } from './auth/index.ts';
import { responseCache } from './cache/index.ts';
import { corsFromEnv } from './cors/index.ts';
import { afterResponse, type EdgeDependencies, inBackground } from './dependencies.ts';
import type { AppEnv } from './env.ts';
import { EdgeError } from './errors.ts';
import { accessLog, createLogger } from './logging/index.ts';
import { EdgeMetrics, METRICS_CONTENT_TYPE } from './metrics/index.ts';
import { chargeTokens, type RateLimitSubject, rateLimit, tokensToReserve } from './rate-limit/index.ts';
import { requestId } from './request-id/index.ts';
import { adminKeysRoutes } from './routes/admin-keys.ts';
import { adminTenantsRoutes } from './routes/admin-tenants.ts';
import { adminUsageRoutes } from './routes/admin-usage.ts';
import {
  chatCompletions,
  resolveChatRoute,
  type UsageOutcome,
  type UsageRecorder,
  validateChatRequest,
} from './routes/chat-completions.ts';
import { healthRoute } from './routes/health.ts';
import { modelRoute, modelsRoute } from './routes/models.ts';
import { usageRoute } from './routes/usage.ts';
import { SidecarPool } from './routing/index.ts';
import { recordUsageEvent, spendCaps } from './usage/index.ts';

/** Chat bodies beyond this are refused (32k-token contexts fit with room to spare). */
export const MAX_BODY_BYTES = 1024 * 1024;

/**
 * The edge's one error → HTTP mapping, used by `onError`: an EdgeError keeps its status, its headers
 * and its retry hint; anything else is a 400 (Hono's HTTPException) or an opaque 500. Exported so that
 * middleware tests answer exactly as the app does.
 */
export function toErrorResponse(error: unknown): { status: number; body: MistralErrorBody; headers: Record<string, string> } {
  if (EdgeError.isInstance(error)) {
    const body: MistralErrorBody = errorBody(error.type, error.message, error.param, error.code);
    if (error.detail) body.detail = error.detail;
    const retryAfter = error.retryAfterSeconds === undefined ? {} : retryAfterHeaders(error.retryAfterSeconds);
    return { status: error.status, body, headers: { ...error.headers, ...retryAfter } };
  }
  if (error instanceof HTTPException) {
    return { status: error.status, body: errorBody('invalid_request_error', error.message || 'Bad request'), headers: {} };
  }
  return { status: 500, body: errorBody('internal_error', 'Internal server error'), headers: {} };
}

export interface CreateAppOptions {
  /** How sidecars and upstreams are reached; tests inject fakes here. */
  fetch?: typeof fetch;
  /** Called in waitUntil with each finished response's usage (token metering, the usage ledger, spend). */
  recordUsage?: UsageRecorder;
}

/** Whose budget a request spends: the key's hash and limits (never the key). */
function rateLimitSubject(c: Context<AppEnv>): RateLimitSubject | undefined {
  const key = c.get('apiKey');
  return key && { keyHash: key.hash, limits: key.limits };
}

/**
 * Settles the request's token reservation to its usage (or charges it). A cache hit spent no tokens; a cut stream's
 * counted tokens are the ledger's, the window keeps to reported usage (its reservation is released).
 */
async function chargeRateLimit(c: Context<AppEnv>, usage: Usage, outcome: UsageOutcome): Promise<unknown> {
  if (outcome.cached || outcome.partial) return undefined;
  const reservation = c.get('tokenReservation');
  if (reservation) return reservation.settle(usage.total_tokens);
  const subject = rateLimitSubject(c);
  return subject ? chargeTokens(c.env.RATE_LIMITER, subject, usage.total_tokens) : undefined;
}

/** Default metering: log the usage, charge the rate-limit window, and record it in the ledger and the month's spend. */
async function chargeUsage(c: Context<AppEnv>, usage: Usage, outcome: UsageOutcome): Promise<unknown> {
  c.get('logger').info('usage', {
    tenant: c.get('apiKey')?.tenant,
    promptTokens: usage.prompt_tokens,
    completionTokens: usage.completion_tokens,
    totalTokens: usage.total_tokens,
    cached: outcome.cached,
  });
  return Promise.all([chargeRateLimit(c, usage, outcome), recordUsageEvent(c, usage, outcome)]);
}

export function createApp(options: CreateAppOptions = {}) {
  const deps: EdgeDependencies = { pool: new SidecarPool(), fetch: options.fetch ?? ((input, init) => fetch(input, init)) };
  const recordUsage = options.recordUsage ?? chargeUsage;
  const app = new Hono<AppEnv>();

  const metrics = new EdgeMetrics();
  app.use(requestId(), accessLog({ onLogged: (fields) => metrics.record(fields) }), corsFromEnv());
  app.use(
    bodyLimit({
      maxSize: MAX_BODY_BYTES,
      onError: () => {
        throw new EdgeError('payload_too_large', `Request body exceeds ${MAX_BODY_BYTES} bytes`);
      },
    }),
  );

  app.get('/health', healthRoute(deps));
  const keyCache = new ApiKeyCache();
  app.use('/v1/*', apiKeyAuth(keyCache));
  app.get('/v1/models', modelsRoute());
  app.get('/v1/models/:id', modelRoute());
  app.get('/v1/usage', usageRoute());
  app.post(
    '/v1/chat/completions',
    validateChatRequest(),
    resolveChatRoute(),
    rateLimit<AppEnv>({
      namespace: (c) => c.env.RATE_LIMITER,
      subject: rateLimitSubject,
      reserveTokens: (c, limits) => tokensToReserve(c.get('chatRequest'), limits),
    }),
    spendCaps(),
    responseCache<AppEnv>({
      tenant: (c) => c.get('apiKey')?.tenant,
      request: (c) => c.get('chatRequest'),
      onHit: (c, completion) =>
        inBackground(
          c,
          afterResponse().then(() => recordUsage(c, completion.usage, { status: 200, cached: true })),
          (error) => c.get('logger').error('usage_record_failed', { message: String(error) }),
        ),
    }),
    chatCompletions(deps, recordUsage),
  );
  app.get('/metrics', adminAuth(), (c) => c.body(metrics.render(), 200, { 'content-type': METRICS_CONTENT_TYPE }));
  app.use('/admin/*', adminAuth());
  app.route('/admin/keys', adminKeysRoutes(keyCache));
  app.route('/admin/usage', adminUsageRoutes());
  app.route('/admin/tenants', adminTenantsRoutes());

  app.notFound(() => {
    throw new EdgeError('not_found', 'Not Found');
  });
  app.onError((error, c) => {
    const { status, body, headers } = toErrorResponse(error);
    const logger = c.get('logger') ?? createLogger({ requestId: c.get('requestId') });
    if (status >= 500)
      logger.error('request_failed', { status, type: body.type, message: error instanceof Error ? error.message : String(error) });
    return c.json(body, status as 500, headers);
  });
  return app;
}
