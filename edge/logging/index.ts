/**
 * The access-log middleware: one structured line per request with method, path, status, duration,
 * tenant and the fields handlers `annotate`, written after the response has gone out.
 */
import type { MiddlewareHandler } from 'hono';
import { afterResponse, inBackground } from '../dependencies.ts';
import type { AppEnv } from '../env.ts';
import { createLogger, type LogFields } from './logger.ts';

export { createLogger, type LogFields, type Logger } from './logger.ts';

/**
 * Gives each request a logger tagged with its request id and writes one access-log line just after
 * the response has started. Mount after `requestId()`.
 *
 * @example
 * app.use(requestId(), accessLog());
 */
export function accessLog(): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const started = Date.now();
    const logger = createLogger({ requestId: c.get('requestId') });
    c.set('logger', logger);
    await next();
    const fields: LogFields = {
      method: c.req.method,
      path: c.req.path,
      status: c.res.status,
      durationMs: Date.now() - started,
      tenant: c.get('apiKey')?.tenant,
      ...logger.annotations,
    };
    // Written once the response is on its way: a log line costs more than the rest of the hot path.
    inBackground(
      c,
      afterResponse().then(() => logger.info('request', fields)),
      () => undefined,
    );
  };
}
