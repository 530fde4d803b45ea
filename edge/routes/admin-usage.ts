/**
 * `GET /admin/usage` (rows aggregated from the ledger's rollups) and `GET /admin/usage/events` (recent raw
 * events), guarded by adminAuth in edge/app.ts. Shapes: shared/usage.ts; parameters: edge/usage/params.ts.
 */
import { Hono } from 'hono';
import type { UsageReport } from '../../shared/usage.ts';
import { pricesFrom } from '../config/index.ts';
import type { AppEnv } from '../env.ts';
import { ledgerDatabase, queryUsage, recentEvents, retentionStartMs } from '../usage/index.ts';
import { adminUsageQuery, eventsQuery } from '../usage/params.ts';

export function adminUsageRoutes() {
  return new Hono<AppEnv>()
    .get('/', async (c) => {
      const query = adminUsageQuery(c);
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
    })
    .get('/events', async (c) => {
      const query = eventsQuery(c, retentionStartMs(c.env));
      return c.json({ object: 'list', data: await recentEvents(ledgerDatabase(c.env), query) });
    });
}
