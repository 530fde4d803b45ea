/**
 * `sirocco deploy --check` on temp copies of the repository's wrangler.toml: as shipped (example ids, local http
 * sidecars) it blocks and names each field; with real-looking ids and https sidecars it is ready. wrangler runs for
 * real with no login (a throwaway HOME, no CLOUDFLARE_API_TOKEN), so the secrets are reported as not checked.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse, stringify } from 'smol-toml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DeployProblem, DeployReport } from '../../cli/deploy-check.ts';
import { REPO_ROOT } from '../../cli/processes.ts';
import { runSirocco } from '../support/cli.ts';

let folder: string;
beforeAll(async () => {
  folder = await mkdtemp(join(tmpdir(), 'sirocco-deploy-check-'));
  // wrangler must not find a developer's login (this process's env is what runSirocco passes on).
  process.env.HOME = folder;
  process.env.XDG_CONFIG_HOME = join(folder, '.config');
  delete process.env.CLOUDFLARE_API_TOKEN;
  delete process.env.CLOUDFLARE_ACCOUNT_ID;
});
afterAll(() => rm(folder, { recursive: true, force: true }));

type Toml = Record<string, unknown> & { vars: Record<string, string>; kv_namespaces: Array<{ id: string }> };

async function shippedConfig(): Promise<Toml> {
  const config = parse(await readFile(join(REPO_ROOT, 'wrangler.toml'), 'utf8')) as Toml;
  // The copy lives elsewhere: point its entry point back at the repository's.
  config.main = join(REPO_ROOT, 'edge/index.ts');
  return config;
}

async function deployableConfig(): Promise<Toml> {
  const config = await shippedConfig();
  config.kv_namespaces.forEach((namespace, index) => {
    namespace.id = `${index + 1}`.padStart(2, '0').repeat(16);
  });
  for (const database of (config.d1_databases as Array<{ database_id: string }> | undefined) ?? []) {
    database.database_id = '9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d';
  }
  const sidecars = JSON.parse(config.vars.SIDECARS!) as Array<{ region: string; url: string }>;
  config.vars.SIDECARS = JSON.stringify(sidecars.map((sidecar) => ({ ...sidecar, url: `https://${sidecar.region}.sidecars.example.com` })));
  config.vars.CORS_ORIGINS = 'https://chat.example.com';
  return config;
}

async function checkConfig(config: Record<string, unknown> | string, ...flags: string[]) {
  const file = join(folder, `wrangler-${Math.random().toString(36).slice(2)}.toml`);
  await writeFile(file, typeof config === 'string' ? config : stringify(config));
  return runSirocco(folder, 'deploy', '--check', '--config', file, ...flags);
}

describe('sirocco deploy --check', () => {
  it('blocks the shipped wrangler.toml: example ids and local http sidecars, each by field; exit 1', async () => {
    const result = await checkConfig(await shippedConfig(), '--json');
    expect(result.code).toBe(1);
    const report = JSON.parse(result.stdout) as DeployReport;
    expect(report.ready).toBe(false);
    const blocking = report.problems.filter((problem) => problem.severity === 'error').map((problem) => problem.field);
    expect(blocking).toEqual(expect.arrayContaining(['kv_namespaces[API_KEYS].id', 'vars.SIDECARS[0].url', 'vars.SIDECARS[1].url']));
    const sidecar = report.problems.filter((problem) => problem.field === 'vars.SIDECARS[0].url').map((problem) => problem.message);
    expect(sidecar).toEqual([expect.stringMatching(/this machine/), expect.stringMatching(/plain http/)]);
  });

  it('says ready (exit 0) with real-looking ids and https sidecars; the secrets it could not list are a warning naming what to run', async () => {
    const result = await checkConfig(await deployableConfig());
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(
      /^ready \(1 warning\): KV API_KEYS, RESPONSE_CACHE; .*2 sidecars over https \(eu-west, us-east\); secrets not checked\.$/m,
    );
    expect(result.stdout).toMatch(
      /! secrets: cannot check \(wrangler is not logged in\): needed SIROCCO_SIDECAR_SECRET, SIROCCO_ADMIN_SECRET/,
    );
    expect(result.stdout).toMatch(/→ npx wrangler login \(or set CLOUDFLARE_API_TOKEN\)/);
  });

  it('a missing required binding and a sidecar on a private network block, with --json', async () => {
    const config = await deployableConfig();
    config.kv_namespaces = config.kv_namespaces.filter((namespace) => (namespace as { binding?: string }).binding !== 'API_KEYS');
    config.vars.SIDECARS = JSON.stringify([{ region: 'eu-west', url: 'https://192.168.1.20:8443', models: ['mistral-tiny'] }]);
    const result = await checkConfig(config, '--json');
    expect(result.code).toBe(1);
    const problems = (JSON.parse(result.stdout) as { problems: DeployProblem[] }).problems.filter(
      (problem) => problem.severity === 'error',
    );
    expect(problems.map((problem) => problem.field)).toEqual(['kv_namespaces[API_KEYS]', 'vars.SIDECARS[0].url']);
    expect(problems[1]!.message).toMatch(/private network/);
  });

  it('--env checks [env.NAME] as wrangler deploys it: no bindings inherited from the top level; an unknown one is a usage error', async () => {
    const config = await deployableConfig();
    config.env = { staging: { vars: config.vars } };
    const staging = await checkConfig(config, '--env', 'staging', '--json');
    expect(staging.code).toBe(1);
    const report = JSON.parse(staging.stdout) as DeployReport & { environment: string };
    expect(report.environment).toBe('staging');
    expect(report.worker).toBe('sirocco-edge-staging');
    expect(report.problems.filter((problem) => problem.severity === 'error').map((problem) => problem.field)).toEqual([
      'kv_namespaces[API_KEYS]',
      'durable_objects.bindings[RATE_LIMITER]',
      'durable_objects.bindings[SPEND_LIMITER]',
    ]);

    const unknown = await checkConfig(config, '--env', 'production');
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/--env production: .* has no \[env\.production\] section/);
  });

  it('bad TOML names the line; a missing file and a missing --check are usage errors', async () => {
    const broken = await checkConfig('name = "sirocco-edge"\n[vars\nSIDECARS = "[]"\n');
    expect(broken.code).toBe(1);
    expect(broken.stderr).toMatch(/^sirocco deploy: --config .*\.toml: not valid TOML at line 2/);

    const missing = await runSirocco(folder, 'deploy', '--check', '--config', join(folder, 'nope.toml'));
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/nope\.toml: not found/);

    const bare = await runSirocco(folder, 'deploy');
    expect(bare.code).toBe(2);
    expect(bare.stderr).toMatch(/only --check is available/);
  });

  it('--help lists what it checks, its flags and exit codes', async () => {
    const result = await runSirocco(folder, 'deploy', '--help');
    expect(result.code).toBe(0);
    for (const text of [
      '--check',
      '--config FILE',
      '--json',
      'placeholder',
      'https',
      'SIROCCO_ADMIN_SECRET',
      'Exit code 0',
      'docs/deploy.md',
    ]) {
      expect(result.stdout).toContain(text);
    }
  });
});
