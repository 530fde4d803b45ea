/**
 * CORS for browser apps, from the CORS_ORIGINS var ("*" or a comma-separated list of exact origins).
 * A thin layer over Hono's cors(): it reads the var per request and exposes the headers clients
 * need to see (request id, rate limits, cache status, Retry-After).
 */
import type { MiddlewareHandler } from 'hono';
import { cors as honoCors } from 'hono/cors';
import { HEADERS } from '../../shared/protocol.ts';
import { corsOriginsFrom } from '../config/index.ts';
import type { AppEnv } from '../env.ts';

export const EXPOSED_HEADERS = [
  HEADERS.requestId,
  'x-ratelimit-limit-req-minute',
  'x-ratelimit-remaining-req-minute',
  'x-ratelimit-limit-tokens-minute',
  'x-ratelimit-remaining-tokens-minute',
  'x-cache',
  'retry-after',
  'retry-after-ms',
];

export const ALLOWED_HEADERS = ['authorization', 'content-type', HEADERS.requestId, HEADERS.region, 'x-sirocco-cache'];

/**
 * @example
 * app.use('*', corsFromEnv());
 */
export function corsFromEnv(): MiddlewareHandler<AppEnv> {
  const middleware = honoCors({
    origin: (origin, c) => {
      const allowed = corsOriginsFrom((c as { env: AppEnv['Bindings'] }).env);
      if (allowed === '*') return '*';
      return allowed.includes(origin) ? origin : null;
    },
    allowMethods: ['GET', 'POST', 'DELETE', 'OPTIONS'],
    allowHeaders: ALLOWED_HEADERS,
    exposeHeaders: EXPOSED_HEADERS,
    maxAge: 600,
  });
  return middleware as MiddlewareHandler<AppEnv>;
}
