/**
 * `GET /v1/usage`: the calling key's own usage, in /admin/usage's shape (only its rows; `group_by` model, day or
 * hour). Behind apiKeyAuth, like every /v1 route.
 */
import type { Handler } from 'hono';
import type { UsageReport } from '../../shared/usage.ts';
import { pricesFrom } from '../config/index.ts';
import type { AppEnv } from '../env.ts';
import { EdgeError } from '../errors.ts';
import { ledgerDatabase, queryUsage } from '../usage/index.ts';
import { ownUsageQuery } from '../usage/params.ts';

export function usageRoute(): Handler<AppEnv> {
  return async (c) => {
    const key = c.get('apiKey');
    if (!key) throw new EdgeError('unauthorized', 'Unauthorized: send your API key as "Authorization: Bearer <key>"');
    const query = ownUsageQuery(c, key.id);
    const data = await queryUsage(ledgerDatabase(c.env), query);
    const report: UsageReport = {
      object: 'list',
      from: query.from,
      to: query.to,
      group_by: query.groupBy,
      currency: pricesFrom(c.env).currency,
      data,
    };
    return c.json(report);
  };
}
