/**
 * Tenant caps, in KV `API_KEYS` under `tenant:<name>` (beside the `key:` records; a tenant exists through its keys,
 * a record only when it has caps). Read on each capped check through a 30 s isolate cache, like key records; a
 * change through this isolate evicts at once.
 */
import * as z from 'zod';
import type { SpendCaps } from './spend-limiter.ts';

const TENANT_PREFIX = 'tenant:';
const CACHE_TTL_MS = 30_000;

const TenantCapsSchema = z.object({ spendMicros: z.number().int().positive().nullable(), tokens: z.number().int().positive().nullable() });

export const NO_CAPS: SpendCaps = { spendMicros: null, tokens: null };

const cache = new Map<string, { caps: SpendCaps; expiresAt: number }>();

export async function tenantCaps(kv: KVNamespace, tenant: string, now = Date.now()): Promise<SpendCaps> {
  const cached = cache.get(tenant);
  if (cached && cached.expiresAt > now) return cached.caps;
  const parsed = TenantCapsSchema.safeParse(await kv.get(TENANT_PREFIX + tenant, 'json'));
  const caps = parsed.success ? parsed.data : NO_CAPS;
  if (cache.size >= 10_000) cache.clear(); // crude bound; refills from KV
  cache.set(tenant, { caps, expiresAt: now + CACHE_TTL_MS });
  return caps;
}

export async function putTenantCaps(kv: KVNamespace, tenant: string, caps: SpendCaps): Promise<void> {
  cache.delete(tenant);
  if (caps.spendMicros === null && caps.tokens === null) await kv.delete(TENANT_PREFIX + tenant);
  else await kv.put(TENANT_PREFIX + tenant, JSON.stringify(caps), { metadata: caps });
}

/** Every tenant with caps, by name. */
export async function listTenantCaps(kv: KVNamespace): Promise<Map<string, SpendCaps>> {
  const tenants = new Map<string, SpendCaps>();
  let cursor: string | undefined;
  do {
    const page: KVNamespaceListResult<unknown> = await kv.list({ prefix: TENANT_PREFIX, cursor });
    for (const entry of page.keys) {
      const parsed = TenantCapsSchema.safeParse(entry.metadata ?? (await kv.get(entry.name, 'json')));
      if (parsed.success) tenants.set(entry.name.slice(TENANT_PREFIX.length), parsed.data);
    }
    cursor = page.list_complete ? undefined : page.cursor;
  } while (cursor);
  return tenants;
}
