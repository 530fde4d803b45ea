/**
 * The sidecar's Hono app: request ids, access logs and request metrics, a body-size limit, the
 * edge signature check (when a secret is configured), the Mistral routes and the health, load
 * report and metrics endpoints. Every error leaves through one `onError` as Mistral's error body.
 */
import { Hono } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { LOCAL_MODELS, modelCard } from '../../shared/api.ts';
import { HEADERS, type LoadReport, requestIdFrom, SIDECAR_PATHS } from '../../shared/protocol.ts';
import { SidecarError } from '../errors.ts';
import { chatCompletionsHandler } from './chat-route.ts';
import type { SidecarEnv } from './context.ts';
import { errorResponse, toSidecarError } from './error-response.ts';
import type { Logger } from './logger.ts';
import type { SidecarMetrics } from './metrics.ts';
import type { ServedModel } from './served-models.ts';
import { bearerTokenCheck, signatureCheck } from './signature.ts';

/** Lifecycle: listening while models load, then ready, then draining after SIGTERM. */
export type SidecarPhase = 'loading' | 'ready' | 'draining';

export interface SidecarState {
  phase: SidecarPhase;
  models: ServedModel[];
}

export interface SidecarAppOptions {
  state: SidecarState;
  region: string;
  maxBatch: number;
  maxQueue: number;
  /** HMAC secret shared with the edge; null ⇒ no signature check. */
  secret: string | null;
  /**
   * Bearer token that opens /metrics without a signature, for a Prometheus scraper. Null: /metrics is signed like
   * every other route (open when there is no secret either); set without a secret: /metrics needs it.
   */
  metricsToken: string | null;
  maxBodyBytes: number;
  metrics: SidecarMetrics;
  logger: Logger;
}

const ROUTES = new Set<string>([SIDECAR_PATHS.health, SIDECAR_PATHS.ready, SIDECAR_PATHS.chatCompletions, '/v1/models', '/metrics']);

export function createSidecarApp({
  state,
  region,
  maxBatch,
  maxQueue,
  secret,
  metricsToken,
  maxBodyBytes,
  metrics,
  logger,
}: SidecarAppOptions): Hono<SidecarEnv> {
  const app = new Hono<SidecarEnv>();

  // The edge's id, echoed unchanged in the shared format (not Hono's requestId, which replaces ids with `.` or `:`)
  // so one request's log lines match across tiers; a missing or malformed id is replaced.
  app.use(async function requestId(c, next) {
    const id = requestIdFrom(c.req.header(HEADERS.requestId));
    c.set('requestId', id);
    c.header(HEADERS.requestId, id);
    await next();
  });
  app.use(async function accessLog(c, next) {
    const started = performance.now();
    await next();
    const route = ROUTES.has(c.req.path) ? c.req.path : 'other';
    metrics.countRequest(route, c.res.status);
    const fields = {
      requestId: c.get('requestId'),
      method: c.req.method,
      path: c.req.path,
      status: c.res.status,
      ms: Math.round(performance.now() - started),
    };
    if (c.req.path === SIDECAR_PATHS.health || c.req.path === '/metrics') logger.debug('request', fields);
    else logger.info('request', fields);
  });
  app.use(bodyLimit({ maxSize: maxBodyBytes }));
  // Probes stay open so load balancers and `npm start` can poll them; they do no model work.
  if (secret) {
    app.use(
      signatureCheck({
        secret,
        exemptPaths: [SIDECAR_PATHS.health, SIDECAR_PATHS.ready],
        bearerPaths: metricsToken ? { '/metrics': metricsToken } : {},
      }),
    );
  } else if (metricsToken) {
    // No signatures to check, but a metrics token was set: it is what opens /metrics.
    app.use('/metrics', bearerTokenCheck(metricsToken));
  }

  const readyModels = (): ServedModel[] => {
    if (state.phase === 'loading')
      throw new SidecarError('overloaded', 'the sidecar is still loading its models', { retryAfterSeconds: 5 });
    if (state.phase === 'draining') throw new SidecarError('overloaded', 'the sidecar is shutting down', { retryAfterSeconds: 1 });
    return state.models;
  };

  app.get(SIDECAR_PATHS.health, (c) => c.json({ status: 'ok', phase: state.phase }));

  app.get(SIDECAR_PATHS.ready, (c) => {
    const stats = state.models.map((model) => model.scheduler.stats());
    const report: LoadReport = {
      ready: state.phase === 'ready',
      region,
      models: state.models.map((model) => model.id),
      queueDepth: stats.reduce((sum, s) => sum + s.queueDepth, 0),
      activeSequences: stats.reduce((sum, s) => sum + s.activeSequences, 0),
      maxBatch,
      maxQueue,
      tokensPerSecond: Math.round(stats.reduce((sum, s) => sum + s.tokensPerSecond, 0) * 100) / 100,
    };
    return c.json(report, report.ready ? 200 : 503);
  });

  app.get('/metrics', async (c) => c.body(await metrics.render(), 200, { 'content-type': metrics.contentType }));

  app.get('/v1/models', (c) => {
    const created = Math.floor(Date.now() / 1000);
    const data = readyModels().map((model) =>
      modelCard(model.id, {
        created,
        aliases: LOCAL_MODELS[model.id].aliases,
        maxContextLength: model.runtime.info.contextLength,
        description: LOCAL_MODELS[model.id].description,
      }),
    );
    return c.json({ object: 'list', data });
  });

  app.post(SIDECAR_PATHS.chatCompletions, chatCompletionsHandler({ models: readyModels, logger }));

  app.notFound((c) =>
    errorResponse(c, new SidecarError('invalid_request_error', `no route for ${c.req.method} ${c.req.path}`, { status: 404 })),
  );
  app.onError((error, c) => {
    const sidecarError = toSidecarError(error);
    if (sidecarError.status >= 500 && sidecarError.type !== 'overloaded') {
      // The full message (file paths included) is for the operator; the client gets the public one.
      logger.error('request failed', { requestId: c.get('requestId'), path: c.req.path, error: sidecarError, cause: sidecarError.cause });
    }
    return errorResponse(c, sidecarError);
  });
  return app;
}
