/**
 * `GET /admin/usage` (rows aggregated from the ledger's rollups) and `GET /admin/usage/events` (recent raw
 * events), guarded by adminAuth in edge/app.ts. Shapes: shared/usage.ts; parameters: edge/usage/params.ts.
 */
import { Hono } from 'hono';
import type { AppEnv } from '../env.ts';
import { ledgerDatabase, recentEvents, retentionStartMs, usageReport } from '../usage/index.ts';
import { adminUsageQuery, eventsQuery } from '../usage/params.ts';

export function adminUsageRoutes() {
  return new Hono<AppEnv>()
    .get('/', async (c) => {
      return c.json(await usageReport(c.env, adminUsageQuery(c)));
    })
    .get('/events', async (c) => {
      const query = eventsQuery(c, retentionStartMs(c.env));
      return c.json({ object: 'list', data: await recentEvents(ledgerDatabase(c.env), query) });
    });
}
