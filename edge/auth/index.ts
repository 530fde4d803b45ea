/**
 * Authentication: `Authorization: Bearer <key>` checked against the hashed records in KV, and the
 * admin secret for /admin routes. Failures are 401 (no or wrong credentials) or 403 (admin routes
 * disabled) in Mistral's error format, raised as EdgeError and rendered by app.onError.
 */
import type { MiddlewareHandler } from 'hono';
import { timingSafeEqual } from '../../shared/crypto.ts';
import type { AppEnv } from '../env.ts';
import { EdgeError } from '../errors.ts';
import { findKey } from './key-store.ts';

export * from './key-store.ts';

function bearerToken(header: string | undefined): string | null {
  const match = header?.match(/^Bearer\s+(\S+)\s*$/i);
  return match?.[1] ?? null;
}

/**
 * Requires a valid API key and stores its record as `c.get('apiKey')`.
 *
 * @example
 * app.use('/v1/*', apiKeyAuth());
 */
export function apiKeyAuth(): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const token = bearerToken(c.req.header('authorization'));
    if (!token) throw new EdgeError('unauthorized', 'Unauthorized: send your API key as "Authorization: Bearer <key>"');
    const record = await findKey(c.env.API_KEYS, token);
    if (!record) throw new EdgeError('unauthorized', 'Unauthorized: invalid API key');
    c.set('apiKey', record);
    await next();
  };
}

/**
 * Requires `Authorization: Bearer <SIROCCO_ADMIN_SECRET>`; without that secret configured the admin
 * routes are off.
 *
 * @example
 * app.use('/admin/*', adminAuth());
 */
export function adminAuth(): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const secret = c.env.SIROCCO_ADMIN_SECRET;
    if (!secret) throw new EdgeError('forbidden', 'Admin routes are disabled: set the SIROCCO_ADMIN_SECRET secret');
    const token = bearerToken(c.req.header('authorization'));
    if (!token || !timingSafeEqual(token, secret)) throw new EdgeError('unauthorized', 'Unauthorized: invalid admin secret');
    await next();
  };
}
