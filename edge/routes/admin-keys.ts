/**
 * `/admin/keys`: create, list and revoke API keys (guarded by adminAuth in edge/app.ts). The key
 * itself is returned once, at creation; afterwards only its id and hash-derived record exist.
 */
import { Hono } from 'hono';
import { type ApiKeyCache, CreateKeyRequestSchema, createKey, keyPeppersFrom, listKeys, revokeKey } from '../auth/index.ts';
import type { ApiKeyRecord, AppEnv } from '../env.ts';
import { EdgeError } from '../errors.ts';
import { parseJsonBody } from '../validation/index.ts';

/** What admins see of a key: everything but the hash. */
function publicView({ id, tenant, models, limits, createdAt }: ApiKeyRecord) {
  return { id, tenant, models, rpm: limits.requestsPerMinute, tpm: limits.tokensPerMinute, created_at: Math.floor(createdAt / 1000) };
}

/** `keyCache` is the API-key middleware's cache: a revocation evicts from it at once. */
export function adminKeysRoutes(keyCache: ApiKeyCache) {
  return new Hono<AppEnv>()
    .post('/', async (c) => {
      const request = await parseJsonBody(c, CreateKeyRequestSchema);
      const { key, record } = await createKey(c.env.API_KEYS, request, keyPeppersFrom(c.env));
      c.get('logger').info('api_key_created', { keyId: record.id, tenant: record.tenant });
      return c.json({ key, ...publicView(record) }, 201);
    })
    .get('/', async (c) => {
      const keys = await listKeys(c.env.API_KEYS);
      return c.json({ object: 'list', data: keys.map(publicView) });
    })
    .delete('/:id', async (c) => {
      const id = c.req.param('id');
      const removed = await revokeKey(c.env.API_KEYS, id);
      keyCache.evict(id);
      if (removed === 0) throw new EdgeError('not_found', `No API key with id "${id}"`, { param: 'id' });
      c.get('logger').info('api_key_revoked', { keyId: id });
      return c.json({ id, deleted: true });
    });
}
