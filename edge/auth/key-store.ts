/**
 * API keys in KV (binding API_KEYS). Only the SHA-256 of a key is stored: `key:<hash>` → record
 * (also kept as list metadata, so listing needs no extra reads). A key's public id is the first 16
 * hex digits of its hash; revoking deletes by that prefix.
 */
import * as z from 'zod';
import { resolveModelId } from '../../shared/api.ts';
import { bytesToHex, sha256Hex, timingSafeEqual } from '../../shared/crypto.ts';
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
  createdAt: z.number(),
});

/** What an admin may set when creating a key. */
export const CreateKeyRequestSchema = z.strictObject({
  tenant: z.string().min(1).max(128),
  /** Model names or canonical ids; omitted or ["*"] means every model. */
  models: z.array(z.string().min(1)).min(1).optional(),
  rpm: z.number().int().positive().optional(),
  tpm: z.number().int().positive().optional(),
  /** Provision a known key (e.g. SIROCCO_DEV_KEY for `npm start`); otherwise one is generated. */
  key: z
    .string()
    .min(20)
    .max(256)
    .regex(/^[\x21-\x7e]+$/, 'printable ASCII without spaces')
    .optional(),
});
export type CreateKeyRequest = z.infer<typeof CreateKeyRequestSchema>;

export function generateApiKey(): string {
  return `sk-sirocco-${bytesToHex(crypto.getRandomValues(new Uint8Array(24)))}`;
}

export async function createKey(kv: KVNamespace, request: CreateKeyRequest): Promise<{ key: string; record: ApiKeyRecord }> {
  const key = request.key ?? generateApiKey();
  const hash = await sha256Hex(key);
  const record: ApiKeyRecord = {
    id: hash.slice(0, ID_LENGTH),
    hash,
    tenant: request.tenant,
    models: request.models ?? ['*'],
    limits: {
      requestsPerMinute: request.rpm ?? DEFAULT_LIMITS.requestsPerMinute,
      tokensPerMinute: request.tpm ?? DEFAULT_LIMITS.tokensPerMinute,
    },
    createdAt: Date.now(),
  };
  await kv.put(KEY_PREFIX + hash, JSON.stringify(record), { metadata: record });
  return { key, record };
}

/** The record for a presented key, or null. The stored hash is compared in constant time. */
export async function findKey(kv: KVNamespace, key: string): Promise<ApiKeyRecord | null> {
  const hash = await sha256Hex(key);
  const stored = await kv.get(KEY_PREFIX + hash, 'json');
  const parsed = ApiKeyRecordSchema.safeParse(stored);
  if (!parsed.success) return null;
  return timingSafeEqual(parsed.data.hash, hash) ? parsed.data : null;
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

/** Deletes the key(s) whose id is `id`; returns how many were removed. */
export async function revokeKey(kv: KVNamespace, id: string): Promise<number> {
  if (!/^[0-9a-f]{16}$/.test(id)) return 0;
  const page = await kv.list({ prefix: KEY_PREFIX + id });
  await Promise.all(page.keys.map((entry) => kv.delete(entry.name)));
  return page.keys.length;
}

/** Whether a key may use a model; aliases count as their canonical id on both sides. */
export function keyAllowsModel(record: ApiKeyRecord, ...names: string[]): boolean {
  if (record.models.includes('*')) return true;
  const canonical = (name: string) => resolveModelId(name) ?? name;
  const allowed = new Set(record.models.map(canonical));
  return names.some((name) => allowed.has(canonical(name)));
}
