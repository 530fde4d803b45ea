/**
 * The access-log middleware: one structured line per request with method, path, status, duration,
 * tenant, key id (never the key), cache status and the fields handlers `annotate` (model, region,
 * tokens…), written after the response has gone out.
 */
import type { MiddlewareHandler } from 'hono';
import { CACHE_STATUS_HEADER } from '../cache/index.ts';
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
export function accessLog(options: { onLogged?: (fields: LogFields) => void } = {}): MiddlewareHandler<AppEnv> {
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
      keyId: c.get('apiKey')?.id,
      cache: c.res.headers.get(CACHE_STATUS_HEADER) ?? undefined,
    };
    // Written once the response is on its way (a log line costs more than the rest of the hot path),
    // and after whatever the handler held it for (a stream's end: its tokens).
    const holds = logger.accessLogHolds;
    const written = Promise.all([afterResponse(), ...holds.map((hold) => hold.catch(() => undefined))]).then(() => {
      // durationMs is until the response started; a held line (a stream) also says when the response ended.
      const line = { ...fields, ...(holds.length > 0 ? { completedMs: Date.now() - started } : {}), ...logger.annotations };
      logger.info('request', line);
      options.onLogged?.(line);
    });
    inBackground(c, written, () => undefined);
  };
}
