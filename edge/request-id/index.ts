/**
 * `x-request-id` on every response: the caller's id when it looks like one (so traces join up across
 * tiers), otherwise a fresh UUID. The sidecar receives the same id.
 */
import type { MiddlewareHandler } from 'hono';
import { HEADERS } from '../../shared/protocol.ts';
import type { AppEnv } from '../env.ts';

/** Printable, bounded, no separators that could forge log fields. */
const ACCEPTABLE_ID = /^[A-Za-z0-9._:-]{8,128}$/;

/**
 * @example
 * app.use(requestId());
 */
export function requestId(): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const incoming = c.req.header(HEADERS.requestId);
    const id = incoming && ACCEPTABLE_ID.test(incoming) ? incoming : crypto.randomUUID();
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
