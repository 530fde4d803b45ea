/**
 * `GET /admin/tenants` (every tenant with a key or caps: its caps and month to date) and
 * `PUT /admin/tenants/:tenant/caps` (set or clear its monthly caps), guarded by adminAuth in edge/app.ts.
 */
import { Hono } from 'hono';
import * as z from 'zod';
import { listKeys } from '../auth/index.ts';
import type { AppEnv } from '../env.ts';
import { EdgeError } from '../errors.ts';
import { listTenantCaps, monthToDate, putTenantCaps, type SpendCaps, tenantSubject } from '../usage/index.ts';
import { parseJsonBody } from '../validation/index.ts';

const MonthlyCap = z.number().int().positive().max(Number.MAX_SAFE_INTEGER).nullable();
const TenantCapsRequestSchema = z.strictObject({ spend_cap_month_micros: MonthlyCap, token_cap_month: MonthlyCap });

async function tenantView(env: AppEnv['Bindings'], tenant: string, caps: SpendCaps) {
  const month = await monthToDate(env.SPEND_LIMITER, tenantSubject(tenant));
  return { tenant, spend_cap_month_micros: caps.spendMicros, token_cap_month: caps.tokens, spend_month_micros: month.spentMicros };
}

export function adminTenantsRoutes() {
  return new Hono<AppEnv>()
    .get('/', async (c) => {
      const [keys, capped] = await Promise.all([listKeys(c.env.API_KEYS), listTenantCaps(c.env.API_KEYS)]);
      const tenants = [...new Set([...keys.map((key) => key.tenant), ...capped.keys()])].sort();
      const none: SpendCaps = { spendMicros: null, tokens: null };
      const data = await Promise.all(tenants.map((tenant) => tenantView(c.env, tenant, capped.get(tenant) ?? none)));
      return c.json({ object: 'list', data });
    })
    .put('/:tenant/caps', async (c) => {
      const tenant = c.req.param('tenant');
      if (tenant.length > 128)
        throw new EdgeError('invalid_request_error', 'A tenant name has at most 128 characters', { param: 'tenant' });
      const request = await parseJsonBody(c, TenantCapsRequestSchema);
      const caps = { spendMicros: request.spend_cap_month_micros, tokens: request.token_cap_month };
      await putTenantCaps(c.env.API_KEYS, tenant, caps);
      c.get('logger').info('tenant_caps_updated', { tenant });
      return c.json(await tenantView(c.env, tenant, caps));
    });
}
