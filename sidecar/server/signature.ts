/**
 * Trust boundary between the edge and this sidecar: when a secret is configured, every request
 * (except the exempt probe paths) must carry `x-sirocco-timestamp` and `x-sirocco-signature`, the hex
 * HMAC-SHA256 of `METHOD\npathWithQuery\ntimestamp\nsha256(body)` (shared/signing.ts). Unsigned,
 * wrong and stale (> 60 s skew) requests get 401 before any work is done.
 */
import type { MiddlewareHandler } from 'hono';
import { verifyRequest } from '../../shared/signing.ts';
import { SidecarError } from '../errors.ts';

export interface SignatureCheckOptions {
  secret: string;
  /** Paths served without a signature (liveness probes). */
  exemptPaths?: string[];
}

/**
 * @example
 * app.use(signatureCheck({ secret: process.env.SIROCCO_SIDECAR_SECRET!, exemptPaths: ['/health'] }))
 */
export function signatureCheck({ secret, exemptPaths = [] }: SignatureCheckOptions): MiddlewareHandler {
  if (!secret) throw new Error('signatureCheck needs a non-empty secret');
  const exempt = new Set(exemptPaths);
  return async function signatureCheck(c, next) {
    if (exempt.has(c.req.path)) return next();
    const url = new URL(c.req.url);
    // Hono caches the body, so the route reads the same bytes that were verified.
    const body = c.req.raw.body ? new Uint8Array(await c.req.arrayBuffer()) : '';
    const result = await verifyRequest({
      secret,
      method: c.req.method,
      path: url.pathname + url.search,
      body,
      headers: c.req.raw.headers,
    });
    if (!result.ok) throw new SidecarError('unauthorized', `Unauthorized: ${result.reason}`);
    await next();
  };
}
