/**
 * API keys in KV (binding API_KEYS). A key is stored only as HMAC-SHA-256(pepper, key), the pepper
 * being a worker secret: `key:<hash>` → record (also kept as list metadata, so listing needs no extra
 * reads). A stolen KV dump without the pepper cannot be brute-forced offline, unlike a bare SHA-256.
 * A key's public id is the first 16 hex digits of the hash it was created under; it never changes.
 *
 * Pepper: `SIROCCO_KEY_PEPPER`, else `SIROCCO_ADMIN_SECRET` (keys are created through the admin API,
 * so that secret exists wherever keys do; `sirocco dev` sets only it). Records are migrated lazily:
 * a key found under an older hash (the admin secret once SIROCCO_KEY_PEPPER is set, or the legacy
 * bare SHA-256) is re-stored under the current one and the old record deleted, on its first use.
 */
import * as z from 'zod';
import { resolveModelId } from '../../shared/api.ts';
import { ApiKeyValueSchema } from '../../shared/api-key.ts';
import { bytesToHex, hmacSha256Hex, sha256Hex, timingSafeEqual } from '../../shared/crypto.ts';
import type { ApiKeyRecord } from '../env.ts';

const KEY_PREFIX = 'key:';
const ID_LENGTH = 16;
/** Mistral's 2023 platform limits, the default for a new key. */
export const DEFAULT_LIMITS = { requestsPerMinute: 120, tokensPerMinute: 2_000_000 } as const;

export const ApiKeyRecordSchema = z.object({
  id: z.string(),
  hash: z.string().regex(/^[0-9a-f]{64}$/),
  tenant: z.string(),
  models: z.array(z.string()),
  limits: z.object({ requestsPerMinute: z.number().int().positive(), tokensPerMinute: z.number().int().positive() }),
  spendCapMonthMicros: z.number().int().positive().nullable().optional(),
  tokenCapMonth: z.number().int().positive().nullable().optional(),
  createdAt: z.number(),
});

/** A monthly cap as the admin API takes it: a positive integer (spend in micro-units of the price table's currency). */
const MonthlyCapSchema = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);

/** What an admin may set when creating a key. */
export const CreateKeyRequestSchema = z.strictObject({
  tenant: z.string().min(1).max(128),
  /** Model names or canonical ids; omitted or ["*"] means every model. */
  models: z.array(z.string().min(1)).min(1).optional(),
  rpm: z.number().int().positive().optional(),
  tpm: z.number().int().positive().optional(),
  spend_cap_month_micros: MonthlyCapSchema.optional(),
  token_cap_month: MonthlyCapSchema.optional(),
  /** Provision a known key (e.g. SIROCCO_DEV_KEY for `npm start`); otherwise one is generated. */
  key: ApiKeyValueSchema.optional(),
});
export type CreateKeyRequest = z.infer<typeof CreateKeyRequestSchema>;

/** What an admin may change on an existing key (`PATCH /admin/keys/:id`); a cap set to null is removed. */
export const UpdateKeyRequestSchema = z
  .strictObject({
    models: z.array(z.string().min(1)).min(1).optional(),
    rpm: z.number().int().positive().optional(),
    tpm: z.number().int().positive().optional(),
    spend_cap_month_micros: MonthlyCapSchema.nullable().optional(),
    token_cap_month: MonthlyCapSchema.nullable().optional(),
  })
  .refine((update) => Object.keys(update).length > 0, 'name at least one of models, rpm, tpm, spend_cap_month_micros, token_cap_month');
export type UpdateKeyRequest = z.infer<typeof UpdateKeyRequestSchema>;

export function generateApiKey(): string {
  return `sk-sirocco-${bytesToHex(crypto.getRandomValues(new Uint8Array(24)))}`;
}

/** The secrets keys are hashed with: `current` for new keys, `previous` still accepted (and migrated). */
export type KeyPeppers = { current: string | undefined; previous: string[] };

/** The worker's peppers: SIROCCO_KEY_PEPPER, else the admin secret (see the module comment). */
export function keyPeppersFrom(env: { SIROCCO_KEY_PEPPER?: string; SIROCCO_ADMIN_SECRET?: string }): KeyPeppers {
  const pepper = env.SIROCCO_KEY_PEPPER || undefined;
  const adminSecret = env.SIROCCO_ADMIN_SECRET || undefined;
  if (pepper) return { current: pepper, previous: adminSecret && adminSecret !== pepper ? [adminSecret] : [] };
  return { current: adminSecret, previous: [] };
}

/** What a key is stored and cached under: its HMAC with the pepper, or (no secret at all) its bare SHA-256. */
export function keyHash(pepper: string | undefined, key: string): Promise<string> {
  return pepper ? hmacSha256Hex(pepper, key) : sha256Hex(key);
}

export async function createKey(
  kv: KVNamespace,
  request: CreateKeyRequest,
  peppers: KeyPeppers,
): Promise<{ key: string; record: ApiKeyRecord }> {
  if (!peppers.current) throw new Error('Cannot create API keys without a pepper: set SIROCCO_KEY_PEPPER (or SIROCCO_ADMIN_SECRET)');
  const key = request.key ?? generateApiKey();
  const hash = await keyHash(peppers.current, key);
  // The same key again (`npm start` provisions its kept dev key on every start) is the same record: one per hash,
  // its creation time kept; tenant, models and limits are the request's.
  const existing = await recordUnder(kv, hash);
  const record: ApiKeyRecord = {
    id: hash.slice(0, ID_LENGTH),
    hash,
    tenant: request.tenant,
    models: request.models ?? ['*'],
    limits: {
      requestsPerMinute: request.rpm ?? DEFAULT_LIMITS.requestsPerMinute,
      tokensPerMinute: request.tpm ?? DEFAULT_LIMITS.tokensPerMinute,
    },
    ...(request.spend_cap_month_micros === undefined ? {} : { spendCapMonthMicros: request.spend_cap_month_micros }),
    ...(request.token_cap_month === undefined ? {} : { tokenCapMonth: request.token_cap_month }),
    createdAt: existing?.createdAt ?? Date.now(),
  };
  await storeRecord(kv, record);
  return { key, record };
}

function storeRecord(kv: KVNamespace, record: ApiKeyRecord): Promise<void> {
  return kv.put(KEY_PREFIX + record.hash, JSON.stringify(record), { metadata: record });
}

/** The record stored under `hash`, if its own hash matches (compared in constant time). */
async function recordUnder(kv: KVNamespace, hash: string): Promise<ApiKeyRecord | null> {
  const parsed = ApiKeyRecordSchema.safeParse(await kv.get(KEY_PREFIX + hash, 'json'));
  return parsed.success && timingSafeEqual(parsed.data.hash, hash) ? parsed.data : null;
}

/**
 * The record for a presented key, or null. Looked up under the current pepper first, then under
 * older hashes; a record found under an older hash is moved to the current one (same id, limits
 * and tenant), so each key pays the extra reads once.
 */
export async function findKey(kv: KVNamespace, key: string, peppers: KeyPeppers): Promise<ApiKeyRecord | null> {
  const currentHash = await keyHash(peppers.current, key);
  const current = await recordUnder(kv, currentHash);
  if (current) return current;
  const olderHashes = [...peppers.previous.map((pepper) => hmacSha256Hex(pepper, key)), ...(peppers.current ? [sha256Hex(key)] : [])];
  for (const pending of olderHashes) {
    const older = await recordUnder(kv, await pending);
    if (!older) continue;
    const migrated: ApiKeyRecord = { ...older, hash: currentHash };
    await storeRecord(kv, migrated);
    await kv.delete(KEY_PREFIX + older.hash);
    return migrated;
  }
  return null;
}

export async function listKeys(kv: KVNamespace): Promise<ApiKeyRecord[]> {
  const records: ApiKeyRecord[] = [];
  let cursor: string | undefined;
  do {
    const page: KVNamespaceListResult<unknown> = await kv.list({ prefix: KEY_PREFIX, cursor });
    for (const entry of page.keys) {
      const parsed = ApiKeyRecordSchema.safeParse(entry.metadata ?? (await kv.get(entry.name, 'json')));
      if (parsed.success) records.push(parsed.data);
    }
    cursor = page.list_complete ? undefined : page.cursor;
  } while (cursor);
  return records;
}

/**
 * Deletes the key(s) whose id is `id`; returns how many were removed. A migrated key keeps its id
 * but no longer sits under that prefix, hence the match on the listed records too.
 */
export async function revokeKey(kv: KVNamespace, id: string): Promise<number> {
  if (!/^[0-9a-f]{16}$/.test(id)) return 0;
  const hashes = new Set((await listKeys(kv)).filter((record) => record.id === id).map((record) => record.hash));
  const page = await kv.list({ prefix: KEY_PREFIX + id });
  for (const entry of page.keys) hashes.add(entry.name.slice(KEY_PREFIX.length));
  await Promise.all([...hashes].map((hash) => kv.delete(KEY_PREFIX + hash)));
  return hashes.size;
}

/** Applies `update` to the key(s) whose id is `id`; returns the updated record, or null when there is none. */
export async function updateKey(kv: KVNamespace, id: string, update: UpdateKeyRequest): Promise<ApiKeyRecord | null> {
  if (!/^[0-9a-f]{16}$/.test(id)) return null;
  const records = (await listKeys(kv)).filter((record) => record.id === id);
  let updated: ApiKeyRecord | null = null;
  for (const record of records) {
    updated = {
      ...record,
      models: update.models ?? record.models,
      limits: {
        requestsPerMinute: update.rpm ?? record.limits.requestsPerMinute,
        tokensPerMinute: update.tpm ?? record.limits.tokensPerMinute,
      },
      spendCapMonthMicros:
        update.spend_cap_month_micros === undefined ? (record.spendCapMonthMicros ?? null) : update.spend_cap_month_micros,
      tokenCapMonth: update.token_cap_month === undefined ? (record.tokenCapMonth ?? null) : update.token_cap_month,
    };
    await storeRecord(kv, updated);
  }
  return updated;
}

/** Whether a key may use a model; aliases count as their canonical id on both sides. */
export function keyAllowsModel(record: ApiKeyRecord, ...names: string[]): boolean {
  if (record.models.includes('*')) return true;
  const canonical = (name: string) => resolveModelId(name) ?? name;
  const allowed = new Set(record.models.map(canonical));
  return names.some((name) => allowed.has(canonical(name)));
}
