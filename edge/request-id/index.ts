/**
 * `x-request-id` on every response: the caller's id when it is in the shared format (shared/protocol.ts,
 * so traces join up across tiers), otherwise a fresh UUID. The sidecar receives and echoes the same id.
 */
import type { MiddlewareHandler } from 'hono';
import { HEADERS, requestIdFrom } from '../../shared/protocol.ts';
import type { AppEnv } from '../env.ts';

/**
 * @example
 * app.use(requestId());
 */
export function requestId(): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const id = requestIdFrom(c.req.header(HEADERS.requestId));
    c.set('requestId', id);
    await next();
    // Set after next() so that error responses built in onError carry it too.
    try {
      c.res.headers.set(HEADERS.requestId, id);
    } catch {
      // Responses passed through from fetch() have immutable headers: copy once.
      c.res = new Response(c.res.body, c.res);
      c.res.headers.set(HEADERS.requestId, id);
    }
  };
}
