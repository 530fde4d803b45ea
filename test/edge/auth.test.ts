/**
 * API-key and admin authentication through the worker app in workerd, with the real KV simulator.
 */
import { env } from 'cloudflare:workers';
import { describe, expect, it } from 'vitest';
import { ApiKeyCache } from '../../edge/auth/index.ts';
import { hmacSha256Hex, sha256Hex } from '../../shared/crypto.ts';
import { ADMIN_SECRET, setup } from './harness.ts';

const edge = setup();
/** The test pepper from edge/vitest.config.ts. */
const KEY_PEPPER = 'test-key-pepper';

describe('API keys', () => {
  it('answers a missing or malformed Authorization header with 401 in Mistral format', async () => {
    for (const authorization of [undefined, 'Basic abc', 'Bearer']) {
      const response = await edge.send('/v1/models', { headers: authorization ? { authorization } : {} });
      expect(response.status).toBe(401);
      expect(await response.json()).toMatchObject({ object: 'error', type: 'unauthorized', param: null, code: null });
    }
  });

  it('answers an unknown key with 401', async () => {
    const response = await edge.chat('sk-sirocco-not-a-real-key', {});
    expect(response.status).toBe(401);
    expect(((await response.json()) as { message: string }).message).toMatch(/invalid API key/);
  });

  it('stores only the HMAC of a key with the pepper: never the key, nor its bare SHA-256', async () => {
    const key = await edge.apiKey({ tenant: 'hash-check' });
    const listed = await env.API_KEYS.list();
    const names = listed.keys.map((entry) => entry.name);
    expect(names).toContain(`key:${await hmacSha256Hex(KEY_PEPPER, key)}`);
    expect(names).not.toContain(`key:${await sha256Hex(key)}`);
    for (const name of names) {
      expect(name).not.toContain(key);
      expect(await env.API_KEYS.get(name)).not.toContain(key);
    }
  });

  it('still accepts a key stored as a bare SHA-256, and moves it under the pepper on first use (same id)', async () => {
    const key = 'sk-sirocco-legacy-key-stored-before-peppering';
    const legacyHash = await sha256Hex(key);
    const legacy = {
      id: legacyHash.slice(0, 16),
      hash: legacyHash,
      tenant: 'legacy',
      models: ['*'],
      limits: { requestsPerMinute: 50, tokensPerMinute: 5000 },
      createdAt: 1,
    };
    await env.API_KEYS.put(`key:${legacyHash}`, JSON.stringify(legacy), { metadata: legacy });

    const first = await edge.chat(key, {});
    expect(first.status).toBe(200);
    await first.text(); // the request's token reservation ends with its body
    await first.settled();
    const pepperedHash = await hmacSha256Hex(KEY_PEPPER, key);
    expect(await env.API_KEYS.get(`key:${legacyHash}`)).toBeNull();
    expect(await env.API_KEYS.get(`key:${pepperedHash}`, 'json')).toEqual({ ...legacy, hash: pepperedHash });
    expect((await edge.chat(key, {})).status).toBe(200);

    // Its id is unchanged, so the operator's `sirocco keys revoke <id>` still finds it.
    const admin = { authorization: `Bearer ${ADMIN_SECRET}` };
    expect((await edge.send(`/admin/keys/${legacy.id}`, { method: 'DELETE', headers: admin })).status).toBe(200);
    expect((await edge.chat(key, {})).status).toBe(401);
  });

  it('hashes with the admin secret when SIROCCO_KEY_PEPPER is unset, and migrates those keys once it is set', async () => {
    const withoutPepper = setup({ SIROCCO_KEY_PEPPER: undefined });
    const key = await withoutPepper.apiKey({ tenant: 'admin-peppered' });
    const adminHash = await hmacSha256Hex(ADMIN_SECRET, key);
    expect(await env.API_KEYS.get(`key:${adminHash}`)).not.toBeNull();
    expect((await withoutPepper.chat(key, {})).status).toBe(200);

    expect((await edge.chat(key, {})).status).toBe(200); // the pepper is now set
    expect(await env.API_KEYS.get(`key:${adminHash}`)).toBeNull();
    expect(await env.API_KEYS.get(`key:${await hmacSha256Hex(KEY_PEPPER, key)}`)).not.toBeNull();
  });

  it('lets a valid key through and forbids models outside its list with 403', async () => {
    const key = await edge.apiKey({ models: ['open-mistral-7b'] });
    expect((await edge.chat(key, { model: 'mistral-tiny' })).status).toBe(200);
    const denied = await edge.chat(key, { model: 'mistral-small' });
    expect(denied.status).toBe(403);
    expect(await denied.json()).toMatchObject({ object: 'error', type: 'forbidden', param: 'model' });
    const models = (await (await edge.send('/v1/models', { headers: { authorization: `Bearer ${key}` } })).json()) as {
      data: { id: string }[];
    };
    expect(models.data.map((model) => model.id)).toEqual(['mistral-tiny']);
  });
});

describe('admin routes', () => {
  const admin = { authorization: `Bearer ${ADMIN_SECRET}`, 'content-type': 'application/json' };

  it('require the admin secret', async () => {
    expect((await edge.send('/admin/keys')).status).toBe(401);
    expect((await edge.send('/admin/keys', { headers: { authorization: 'Bearer wrong' } })).status).toBe(401);
  });

  it('are off when no admin secret is configured', async () => {
    const withoutSecret = setup({ SIROCCO_ADMIN_SECRET: undefined });
    const response = await withoutSecret.send('/admin/keys', { headers: admin });
    expect(response.status).toBe(403);
    expect(((await response.json()) as { message: string }).message).toMatch(/SIROCCO_ADMIN_SECRET/);
  });

  it('create a key that works once, list it without the key, and revoke it', async () => {
    const created = await edge.send('/admin/keys', {
      method: 'POST',
      headers: admin,
      body: JSON.stringify({ tenant: 'globex', models: ['mistral-tiny'], rpm: 10, tpm: 1000 }),
    });
    expect(created.status).toBe(201);
    const { key, id } = (await created.json()) as { key: string; id: string };
    expect(key).toMatch(/^sk-sirocco-[0-9a-f]{48}$/);
    expect((await edge.chat(key, {})).status).toBe(200);

    const list = (await (await edge.send('/admin/keys', { headers: admin })).json()) as { data: Record<string, unknown>[] };
    expect(list.data).toContainEqual(expect.objectContaining({ id, tenant: 'globex', models: ['mistral-tiny'], rpm: 10, tpm: 1000 }));
    expect(JSON.stringify(list)).not.toContain(key);

    expect((await edge.send(`/admin/keys/${id}`, { method: 'DELETE', headers: admin })).status).toBe(200);
    expect((await edge.chat(key, {})).status).toBe(401);
    const again = await edge.send(`/admin/keys/${id}`, { method: 'DELETE', headers: admin });
    expect(again.status).toBe(404);
  });

  it('provision a known key value and validate the create body', async () => {
    const known = 'sk-sirocco-dev-key-for-npm-start';
    const created = await edge.send('/admin/keys', { method: 'POST', headers: admin, body: JSON.stringify({ tenant: 'dev', key: known }) });
    expect(created.status).toBe(201);
    expect((await edge.chat(known, {})).status).toBe(200);

    const bad = await edge.send('/admin/keys', {
      method: 'POST',
      headers: admin,
      body: JSON.stringify({ tenant: '', rpm: -1, colour: 'red' }),
    });
    expect(bad.status).toBe(422);
    expect(((await bad.json()) as { detail: unknown[] }).detail).toHaveLength(3);

    // The key rule (shared/api-key.ts) that `npm start` also checks SIROCCO_DEV_KEY against.
    const short = await edge.send('/admin/keys', {
      method: 'POST',
      headers: admin,
      body: JSON.stringify({ tenant: 'dev', key: 'k'.repeat(19) }),
    });
    expect(short.status).toBe(422);
    expect(((await short.json()) as { detail: Array<{ loc: unknown[] }> }).detail.map((entry) => entry.loc)).toEqual([['body', 'key']]);
  });

  it('keep one record for a key created twice (npm start provisions its dev key on every start), its creation time kept', async () => {
    const known = 'sk-sirocco-dev-key-created-twice';
    const create = async () => {
      const response = await edge.send('/admin/keys', {
        method: 'POST',
        headers: admin,
        body: JSON.stringify({ tenant: 'dev', key: known }),
      });
      expect(response.status).toBe(201);
      return (await response.json()) as { id: string; created_at: number };
    };
    const first = await create();
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    const second = await create();
    expect(second).toEqual(first);
    const list = (await (await edge.send('/admin/keys', { headers: admin })).json()) as { data: Array<{ id: string }> };
    expect(list.data.filter((key) => key.id === first.id)).toHaveLength(1);
  });
});

describe('ApiKeyCache', () => {
  const record = {
    id: 'abcdef0123456789',
    hash: `abcdef0123456789${'0'.repeat(48)}`,
    tenant: 't',
    models: ['*'],
    limits: { requestsPerMinute: 1, tokensPerMinute: 1 },
    createdAt: 0,
  };

  it('serves a verified record until its TTL ends, and forgets it on eviction by id', () => {
    const cache = new ApiKeyCache(1000);
    cache.set(record, 0);
    expect(cache.get(record.hash, 999)).toEqual(record);
    expect(cache.get(record.hash, 1000)).toBeUndefined();
    cache.set(record, 0);
    cache.evict(record.id);
    expect(cache.get(record.hash, 1)).toBeUndefined();
  });
});
