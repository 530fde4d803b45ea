/**
 * Authentication: `Authorization: Bearer <key>` checked against the peppered hashes in KV, and the
 * admin secret for /admin routes. Failures are 401 (no or wrong credentials) or 403 (admin routes
 * disabled) in Mistral's error format, raised as EdgeError and rendered by app.onError.
 */
import type { MiddlewareHandler } from 'hono';
import { timingSafeEqual } from '../../shared/crypto.ts';
import type { ApiKeyRecord, AppEnv } from '../env.ts';
import { EdgeError } from '../errors.ts';
import { findKey, keyHash, keyPeppersFrom } from './key-store.ts';

export * from './key-store.ts';

/**
 * Recently verified key records, by hash, in the isolate's memory: saves a KV read per request.
 * Entries live `ttlMs` (KV itself takes up to 60 s to propagate a revocation between locations, so
 * this adds no new staleness); a revocation through this isolate evicts at once.
 */
export class ApiKeyCache {
  readonly #entries = new Map<string, { record: ApiKeyRecord; expiresAt: number }>();

  constructor(
    private readonly ttlMs = 30_000,
    private readonly maxEntries = 10_000,
  ) {}

  get(hash: string, now = Date.now()): ApiKeyRecord | undefined {
    const entry = this.#entries.get(hash);
    if (entry && entry.expiresAt > now) return entry.record;
    if (entry) this.#entries.delete(hash);
    return undefined;
  }

  set(record: ApiKeyRecord, now = Date.now()): void {
    if (this.#entries.size >= this.maxEntries) this.#entries.clear(); // crude bound; refills from KV
    this.#entries.set(record.hash, { record, expiresAt: now + this.ttlMs });
  }

  /** Evicts every cached key whose id is `id`. */
  evict(id: string): void {
    for (const [hash, entry] of this.#entries) if (entry.record.id === id || hash.startsWith(id)) this.#entries.delete(hash);
  }
}

function bearerToken(header: string | undefined): string | null {
  const match = header?.match(/^Bearer\s+(\S+)\s*$/i);
  return match?.[1] ?? null;
}

/**
 * Requires a valid API key and stores its record as `c.get('apiKey')`.
 *
 * @example
 * const keys = new ApiKeyCache();
 * app.use('/v1/*', apiKeyAuth(keys));
 */
export function apiKeyAuth(cache: ApiKeyCache = new ApiKeyCache()): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const token = bearerToken(c.req.header('authorization'));
    if (!token) throw new EdgeError('unauthorized', 'Unauthorized: send your API key as "Authorization: Bearer <key>"');
    const peppers = keyPeppersFrom(c.env);
    const hash = await keyHash(peppers.current, token);
    const cached = cache.get(hash);
    const record = cached && timingSafeEqual(cached.hash, hash) ? cached : await findKey(c.env.API_KEYS, token, peppers);
    if (!record) throw new EdgeError('unauthorized', 'Unauthorized: invalid API key');
    if (!cached) cache.set(record);
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
