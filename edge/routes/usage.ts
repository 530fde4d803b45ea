/**
 * `GET /v1/usage`: the calling key's own usage, in /admin/usage's shape (only its rows; `group_by` model, day or
 * hour). Behind apiKeyAuth, like every /v1 route.
 */
import type { Handler } from 'hono';
import type { AppEnv } from '../env.ts';
import { EdgeError } from '../errors.ts';
import { usageReport } from '../usage/index.ts';
import { ownUsageQuery } from '../usage/params.ts';

export function usageRoute(): Handler<AppEnv> {
  return async (c) => {
    const key = c.get('apiKey');
    if (!key) throw new EdgeError('unauthorized', 'Unauthorized: send your API key as "Authorization: Bearer <key>"');
    return c.json(await usageReport(c.env, ownUsageQuery(c, key.id)));
  };
}
