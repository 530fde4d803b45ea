/**
 * Structured logs: one JSON object per line (Workers Logs and `wrangler tail` index the fields).
 * Callers pass explicit fields only, so keys and secrets never reach a log line; the access-log
 * middleware records method, path, status, duration, tenant and the fields handlers `annotate`.
 */
import type { MiddlewareHandler } from 'hono';
import { afterResponse, inBackground } from '../dependencies.ts';
import type { AppEnv } from '../env.ts';

export type LogFields = Record<string, string | number | boolean | null | undefined>;

export interface Logger {
  info(event: string, fields?: LogFields): void;
  warn(event: string, fields?: LogFields): void;
  error(event: string, fields?: LogFields): void;
  /** Adds fields to this request's access-log line. */
  annotate(fields: LogFields): void;
  readonly annotations: LogFields;
}

export function createLogger(base: LogFields): Logger {
  const annotations: LogFields = {};
  const write = (level: 'info' | 'warn' | 'error', event: string, fields: LogFields = {}) => {
    const line = JSON.stringify({ level, event, time: new Date().toISOString(), ...base, ...fields });
    if (level === 'error') console.error(line);
    else if (level === 'warn') console.warn(line);
    else console.log(line);
  };
  return {
    info: (event, fields) => write('info', event, fields),
    warn: (event, fields) => write('warn', event, fields),
    error: (event, fields) => write('error', event, fields),
    annotate: (fields) => Object.assign(annotations, fields),
    annotations,
  };
}

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
