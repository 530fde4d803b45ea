import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  checkDeployment,
  configForEnvironment,
  formatDeployReport,
  isPlaceholderId,
  REQUIRED_BINDINGS,
  type SecretsStatus,
  unreachableHost,
} from './deploy-check.ts';
import { REPO_ROOT } from './processes.ts';

/** A deployable configuration, as smol-toml parses wrangler.toml. */
function goodConfig(): Record<string, unknown> {
  return {
    name: 'sirocco-edge',
    main: 'edge/index.ts',
    compatibility_flags: ['nodejs_compat', 'enable_request_signal'],
    kv_namespaces: [{ binding: 'API_KEYS', id: '3f2a9c1e4b5d6f708192a3b4c5d6e7f8' }],
    durable_objects: {
      bindings: [
        { name: 'RATE_LIMITER', class_name: 'RateLimiter' },
        { name: 'SPEND_LIMITER', class_name: 'SpendLimiter' },
      ],
    },
    migrations: [
      { tag: 'v1', new_sqlite_classes: ['RateLimiter'] },
      { tag: 'v2', new_sqlite_classes: ['SpendLimiter'] },
    ],
    d1_databases: [{ binding: 'USAGE_DB', database_name: 'sirocco-usage', database_id: '9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d' }],
    queues: { producers: [{ binding: 'USAGE_QUEUE', queue: 'sirocco-usage' }], consumers: [{ queue: 'sirocco-usage' }] },
    vars: {
      SIDECARS: JSON.stringify([{ region: 'eu-west', url: 'https://eu.sidecars.example.com', models: ['mistral-tiny'] }]),
      UPSTREAMS: JSON.stringify({ 'mistral-medium': { url: 'https://api.mistral.ai', apiKeySecret: 'MISTRAL_API_KEY' } }),
      CORS_ORIGINS: 'https://chat.example.com',
    },
  };
}

const allSecrets: SecretsStatus = {
  listed: true,
  names: ['SIROCCO_SIDECAR_SECRET', 'SIROCCO_ADMIN_SECRET', 'SIROCCO_KEY_PEPPER', 'MISTRAL_API_KEY'],
};
const check = (config: Record<string, unknown>, secrets: SecretsStatus = allSecrets) =>
  checkDeployment(config, secrets, { mainExists: true });
const fields = (config: Record<string, unknown>, secrets?: SecretsStatus) =>
  check(config, secrets).problems.map((problem) => `${problem.severity} ${problem.field}`);

describe('checkDeployment', () => {
  it('finds nothing in a deployable configuration and says ready', () => {
    const report = check(goodConfig());
    expect(report.problems).toEqual([]);
    expect(report.ready).toBe(true);
    expect(formatDeployReport(report, 'wrangler.toml')).toMatch(
      /^ready: KV API_KEYS; D1 USAGE_DB; queue sirocco-usage; .*1 sidecar over https \(eu-west\)/m,
    );
  });

  it('names placeholder and malformed ids by binding', () => {
    const config = goodConfig();
    config.kv_namespaces = [
      { binding: 'API_KEYS', id: '00000000000000000000000000000001' },
      { binding: 'RESPONSE_CACHE', id: 'not-an-id' },
    ];
    config.d1_databases = [{ binding: 'USAGE_DB', database_name: 'sirocco-usage', database_id: '00000000-0000-0000-0000-000000000003' }];
    const report = check(config);
    expect(report.ready).toBe(false);
    expect(report.problems.map((problem) => problem.field)).toEqual([
      'kv_namespaces[API_KEYS].id',
      'kv_namespaces[RESPONSE_CACHE].id',
      'd1_databases[USAGE_DB].database_id',
    ]);
    expect(report.problems[0]!.fix).toMatch(/wrangler kv namespace create API_KEYS/);
    expect(report.problems[2]!.fix).toMatch(/wrangler d1 create sirocco-usage/);
  });

  it('refuses sidecars on this machine, on a private network, or over http, each by its index', () => {
    const config = goodConfig();
    (config.vars as Record<string, string>).SIDECARS = JSON.stringify([
      { region: 'a', url: 'http://127.0.0.1:8081' },
      { region: 'b', url: 'https://localhost:8082' },
      { region: 'c', url: 'https://10.1.2.3' },
      { region: 'd', url: 'http://gpu.example.com:8080' },
      { region: 'e', url: 'not a url' },
    ]);
    expect(fields(config)).toEqual([
      'error vars.SIDECARS[0].url',
      'error vars.SIDECARS[0].url',
      'error vars.SIDECARS[1].url',
      'error vars.SIDECARS[2].url',
      'error vars.SIDECARS[3].url',
      'error vars.SIDECARS[4].url',
    ]);
    const messages = check(config).problems.map((problem) => problem.message);
    expect(messages[0]).toMatch(/this machine/);
    expect(messages[1]).toMatch(/plain http/);
    expect(messages[3]).toMatch(/private network/);
  });

  it('reports missing required bindings, an unmigrated Durable Object class, and a queue nothing consumes', () => {
    const config = goodConfig();
    config.kv_namespaces = [];
    config.durable_objects = {
      bindings: [
        { name: 'RATE_LIMITER', class_name: 'RateLimiter' },
        { name: 'OTHER', class_name: 'Other' },
      ],
    };
    config.queues = { producers: [{ binding: 'USAGE_QUEUE', queue: 'sirocco-usage' }] };
    expect(fields(config)).toEqual([
      'error migrations',
      'warning queues.producers[USAGE_QUEUE]',
      'error kv_namespaces[API_KEYS]',
      'error durable_objects.bindings[SPEND_LIMITER]',
    ]);
  });

  it('names each missing secret (upstream keys included); a missing pepper is a warning', () => {
    const report = check(goodConfig(), { listed: true, names: ['SIROCCO_ADMIN_SECRET'] });
    expect(report.problems.map((problem) => `${problem.severity} ${problem.field} ${problem.fix}`)).toEqual([
      'error secrets.SIROCCO_SIDECAR_SECRET npx wrangler secret put SIROCCO_SIDECAR_SECRET',
      'error secrets.MISTRAL_API_KEY npx wrangler secret put MISTRAL_API_KEY',
      'warning secrets.SIROCCO_KEY_PEPPER npx wrangler secret put SIROCCO_KEY_PEPPER (before the first key is created)',
    ]);
  });

  it('secrets it cannot list are a warning that says what to run, not a block', () => {
    const report = check(goodConfig(), { listed: false, reason: 'wrangler is not logged in', fix: 'npx wrangler login' });
    expect(report.ready).toBe(true);
    expect(report.problems).toEqual([
      {
        severity: 'warning',
        field: 'secrets',
        message: 'cannot check (wrangler is not logged in): needed SIROCCO_SIDECAR_SECRET, SIROCCO_ADMIN_SECRET, MISTRAL_API_KEY',
        fix: 'npx wrangler login',
      },
    ]);
  });

  it('invalid JSON in SIDECARS, no model source at all, a missing entry point', () => {
    const config = goodConfig();
    config.vars = { SIDECARS: '[{"region": ', CORS_ORIGINS: 'https://chat.example.com' };
    const report = checkDeployment(config, allSecrets, { mainExists: false });
    expect(report.problems.map((problem) => problem.field)).toEqual(['main', 'vars.SIDECARS', 'vars.SIDECARS']);
    expect(report.problems[1]!.message).toMatch(/^not valid JSON/);
    expect(report.problems[2]!.message).toMatch(/no model to serve/);
  });
});

describe('helpers', () => {
  it('isPlaceholderId: the example ids, not real ones', () => {
    expect(isPlaceholderId('00000000000000000000000000000001')).toBe(true);
    expect(isPlaceholderId('00000000-0000-0000-0000-000000000003')).toBe(true);
    expect(isPlaceholderId('3f2a9c1e4b5d6f708192a3b4c5d6e7f8')).toBe(false);
    expect(isPlaceholderId('00000000000000000000000000000a01')).toBe(false);
  });

  it('unreachableHost: loopback, private and link-local addresses', () => {
    expect(unreachableHost('127.0.0.1')).toBe('this machine');
    expect(unreachableHost('[::1]')).toBe('this machine');
    expect(unreachableHost('sidecar.localhost')).toBe('this machine');
    expect(unreachableHost('192.168.1.20')).toBe('a private network');
    expect(unreachableHost('172.20.0.5')).toBe('a private network');
    expect(unreachableHost('169.254.1.1')).toBe('a link-local address');
    expect(unreachableHost('172.32.0.5')).toBeUndefined();
    expect(unreachableHost('eu.sidecars.example.com')).toBeUndefined();
  });

  it('REQUIRED_BINDINGS are the required KV and Durable Object members of EdgeBindings (edge/env.ts)', () => {
    const source = readFileSync(join(REPO_ROOT, 'edge/env.ts'), 'utf8');
    const interfaceBody = source.slice(
      source.indexOf('export interface EdgeBindings'),
      source.indexOf('\n}', source.indexOf('export interface EdgeBindings')),
    );
    const required = [...interfaceBody.matchAll(/^\s+([A-Z_]+): (KVNamespace|DurableObjectNamespace)\b/gm)].map(([, name, type]) => ({
      kind: type === 'KVNamespace' ? 'kv' : 'durable_object',
      name,
    }));
    expect(required).toEqual(REQUIRED_BINDINGS);
  });
});

describe('configForEnvironment', () => {
  it('layers [env.NAME] over the top level without inheriting bindings or vars, as wrangler deploy --env does', () => {
    const top = goodConfig();
    const production = {
      vars: {
        SIDECARS: '[]',
        UPSTREAMS: '{"m": {"url": "https://api.mistral.ai", "apiKeySecret": "K"}}',
        CORS_ORIGINS: 'https://a.example',
      },
      routes: ['api.example.com/*'],
    };
    const config = configForEnvironment({ ...top, env: { production } }, 'production')!;
    expect(config.name).toBe('sirocco-edge-production');
    expect(config.main).toBe('edge/index.ts');
    expect(config.migrations).toEqual(top.migrations);
    expect(config.routes).toEqual(['api.example.com/*']);
    expect(config.vars).toEqual(production.vars);
    expect(config).not.toHaveProperty('kv_namespaces');
    expect(config).not.toHaveProperty('env');
    const problems = check(config, { listed: true, names: ['SIROCCO_ADMIN_SECRET', 'SIROCCO_KEY_PEPPER', 'K'] }).problems;
    expect(problems.map((problem) => problem.field)).toEqual([
      'kv_namespaces[API_KEYS]',
      'durable_objects.bindings[RATE_LIMITER]',
      'durable_objects.bindings[SPEND_LIMITER]',
    ]);
    expect(configForEnvironment(top, 'staging')).toBeUndefined();
    expect(configForEnvironment({ ...top, env: { staging: { name: 'edge-staging' } } }, 'staging')!.name).toBe('edge-staging');
  });
});
