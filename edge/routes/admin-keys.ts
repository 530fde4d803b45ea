/**
 * `/admin/keys`: create, list, change and revoke API keys (guarded by adminAuth in edge/app.ts). The key
 * itself is returned once, at creation; afterwards only its id and hash-derived record exist. A listed key
 * carries its month to date and last use from its SpendLimiter object (edge/usage).
 */
import { Hono } from 'hono';
import {
  type ApiKeyCache,
  CreateKeyRequestSchema,
  createKey,
  keyPeppersFrom,
  listKeys,
  revokeKey,
  UpdateKeyRequestSchema,
  updateKey,
} from '../auth/index.ts';
import type { ApiKeyRecord, AppEnv } from '../env.ts';
import { EdgeError } from '../errors.ts';
import { keySubject, type MonthToDate, monthToDate } from '../usage/index.ts';
import { parseJsonBody } from '../validation/index.ts';

/** What admins see of a key: everything but the hash, with its caps and month to date. */
function publicView(record: ApiKeyRecord, month: MonthToDate) {
  const { id, tenant, models, limits, createdAt } = record;
  return {
    id,
    tenant,
    models,
    rpm: limits.requestsPerMinute,
    tpm: limits.tokensPerMinute,
    spend_cap_month_micros: record.spendCapMonthMicros ?? null,
    token_cap_month: record.tokenCapMonth ?? null,
    created_at: Math.floor(createdAt / 1000),
    last_used_at: month.lastUsedMs === null ? null : Math.floor(month.lastUsedMs / 1000),
    spend_month_micros: month.spentMicros,
  };
}

/** `keyCache` is the API-key middleware's cache: a revocation or change evicts from it at once. */
export function adminKeysRoutes(keyCache: ApiKeyCache) {
  return new Hono<AppEnv>()
    .post('/', async (c) => {
      const request = await parseJsonBody(c, CreateKeyRequestSchema);
      const { key, record } = await createKey(c.env.API_KEYS, request, keyPeppersFrom(c.env));
      c.get('logger').info('api_key_created', { keyId: record.id, tenant: record.tenant });
      // The same key provisioned again (npm start's dev key) keeps its month: the row is the one GET lists.
      return c.json({ key, ...publicView(record, await monthToDate(c.env.SPEND_LIMITER, keySubject(record))) }, 201);
    })
    .get('/', async (c) => {
      const keys = await listKeys(c.env.API_KEYS);
      const data = await Promise.all(
        keys.map(async (record) => publicView(record, await monthToDate(c.env.SPEND_LIMITER, keySubject(record)))),
      );
      return c.json({ object: 'list', data });
    })
    .patch('/:id', async (c) => {
      const id = c.req.param('id');
      const update = await parseJsonBody(c, UpdateKeyRequestSchema);
      const record = await updateKey(c.env.API_KEYS, id, update);
      keyCache.evict(id);
      if (!record) throw new EdgeError('not_found', `No API key with id "${id}"`, { param: 'id' });
      c.get('logger').info('api_key_updated', { keyId: id });
      return c.json(publicView(record, await monthToDate(c.env.SPEND_LIMITER, keySubject(record))));
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
