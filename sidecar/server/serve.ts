/**
 * Starts a sidecar: listen first (so `/health` answers and `/ready` says 503 while models load),
 * load the models, then serve. `stop()` is the graceful shutdown SIGTERM triggers: admission stops
 * (503), in-flight requests get `shutdownGraceMs` to finish, then connections close and the
 * engines are disposed.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { getRequestListener } from '@hono/node-server';
import { createSidecarApp, type SidecarState } from './app.ts';
import type { ServeConfig } from './config.ts';
import { createLogger, type Logger } from './logger.ts';
import { createSidecarMetrics } from './metrics.ts';
import { loadServedModels } from './served-models.ts';

export interface RunningSidecar {
  readonly url: string;
  readonly port: number;
  readonly state: SidecarState;
  /** Graceful shutdown; idempotent. */
  stop(reason?: string): Promise<void>;
}

/** How long finished responses get to flush before lingering connections are cut. */
const CONNECTION_CLOSE_GRACE_MS = 1_000;

export async function startSidecar(config: ServeConfig, logger: Logger = createLogger()): Promise<RunningSidecar> {
  const metrics = createSidecarMetrics();
  const state: SidecarState = { phase: 'loading', models: [] };
  const app = createSidecarApp({
    state,
    region: config.region,
    maxBatch: config.maxBatch,
    maxQueue: config.maxQueue,
    secret: config.sidecarSecret,
    metricsToken: config.metricsToken,
    maxBodyBytes: config.maxBodyBytes,
    metrics,
    logger,
  });
  const server = createServer(getRequestListener(app.fetch));
  const port = await listen(server, config.host, config.port);
  const host = config.host.includes(':') ? `[${config.host}]` : config.host;
  const url = `http://${host}:${port}`;
  logger.info('listening', {
    url,
    port,
    region: config.region,
    maxBatch: config.maxBatch,
    maxQueue: config.maxQueue,
    signed: config.sidecarSecret !== null,
  });

  let stopping: Promise<void> | null = null;
  const stop = (reason = 'stop requested') => {
    stopping ??= (async () => {
      logger.info('shutting down', { reason, graceMs: config.shutdownGraceMs });
      state.phase = 'draining';
      await Promise.all(state.models.map((model) => model.scheduler.shutdown(config.shutdownGraceMs)));
      await closeServer(server);
      await Promise.all(state.models.map((model) => model.runtime.dispose()));
      logger.info('stopped', {});
    })();
    return stopping;
  };

  try {
    state.models = await loadServedModels(config, metrics, logger);
  } catch (error) {
    await closeServer(server);
    throw error;
  }
  if (state.phase === 'loading') {
    state.phase = 'ready';
    logger.info('ready', { url, models: state.models.map((model) => model.id) });
  }
  return { url, port, state, stop };
}

function listen(server: Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => {
      const why = error.code === 'EADDRINUSE' ? 'the port is already in use' : error.message;
      reject(new Error(`cannot listen on ${host}:${port}: ${why}`, { cause: error }));
    });
    server.listen(port, host, () => resolve((server.address() as AddressInfo).port));
  });
}

/** Stops accepting, lets responses in progress flush, then cuts whatever lingers. */
function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => server.closeAllConnections(), CONNECTION_CLOSE_GRACE_MS);
    timer.unref();
    server.close(() => {
      clearTimeout(timer);
      resolve();
    });
    server.closeIdleConnections();
  });
}
