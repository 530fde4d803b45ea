/**
 * `sirocco keys` as an operator runs it: the real CLI process against a real `wrangler dev` edge
 * (throwaway KV state), creating, listing and revoking keys, and every kind of mistake.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeDevVars } from '../../cli/dev-vars.ts';
import { freePort, type ManagedProcess, REPO_ROOT, SIROCCO_BIN, spawnWranglerDev, waitUntilReady } from '../../cli/processes.ts';

/** Shell and dotenv syntax on purpose: wrangler dev must get it verbatim through its secrets file. */
// biome-ignore lint/suspicious/noTemplateCurlyInString: a literal ${PATH} is the case under test
const ADMIN_SECRET = "keys-cli-test-$HOME-\\${PATH}-'quoted'-#-admin-secret";

let edgeUrl: string;
let wrangler: ManagedProcess | undefined;
let persistTo: string;

function sirocco(args: string[], env: Record<string, string | undefined> = {}) {
  return new Promise<{ code: number; stdout: string; stderr: string }>((done) => {
    execFile(
      process.execPath,
      [SIROCCO_BIN, 'keys', ...args],
      { env: { ...process.env, SIROCCO_ADMIN_SECRET: ADMIN_SECRET, ...env }, cwd: REPO_ROOT },
      (error, stdout, stderr) => done({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr }),
    );
  });
}

beforeAll(async () => {
  const port = await freePort();
  persistTo = await mkdtemp(join(tmpdir(), 'sirocco-keys-test-'));
  edgeUrl = `http://127.0.0.1:${port}`;
  wrangler = await spawnWranglerDev({
    port,
    persistTo,
    logLevel: 'error',
    inspectorPort: await freePort(),
    secrets: { SIROCCO_ADMIN_SECRET: ADMIN_SECRET },
  });
  await waitUntilReady(wrangler, `${edgeUrl}/health`, { timeoutMs: 90_000 });
}, 120_000);

afterAll(async () => {
  await wrangler?.stop({ graceMs: 5_000 });
  await rm(persistTo, { recursive: true, force: true });
});

describe('sirocco keys', () => {
  it('creates a key that is printed once and works, lists it, and revokes it', async () => {
    const created = await sirocco([
      'create',
      '--url',
      edgeUrl,
      '--tenant',
      'acme',
      '--models',
      'mistral-tiny,open-mixtral-8x7b',
      '--rpm',
      '30',
      '--tpm',
      '5000',
    ]);
    expect(created.code).toBe(0);
    const key = created.stdout.trim();
    expect(key).toMatch(/^sk-sirocco-[0-9a-f]{48}$/);
    expect(created.stderr).toMatch(/cannot be shown again/);

    const models = await fetch(`${edgeUrl}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
    expect(models.status).toBe(200);

    const listed = await sirocco(['list', '--url', edgeUrl, '--json']);
    const keys = JSON.parse(listed.stdout) as { id: string; tenant: string; models: string[]; rpm: number; tpm: number }[];
    const entry = keys.find((candidate) => candidate.tenant === 'acme');
    expect(entry).toMatchObject({ models: ['mistral-tiny', 'open-mixtral-8x7b'], rpm: 30, tpm: 5000 });
    expect(listed.stdout).not.toContain(key);

    const plain = await sirocco(['list', '--url', edgeUrl]);
    expect(plain.stdout).toContain(`${entry?.id}  tenant=acme`);

    const revoked = await sirocco(['revoke', entry!.id, '--url', edgeUrl]);
    expect(revoked).toMatchObject({ code: 0, stdout: `revoked ${entry?.id}\n` });
    expect((await fetch(`${edgeUrl}/v1/models`, { headers: { authorization: `Bearer ${key}` } })).status).toBe(401);
  });

  it('provisions a chosen key value (what npm start does with SIROCCO_DEV_KEY)', async () => {
    const created = await sirocco(['create', '--url', edgeUrl, '--key', 'sk-chosen-value-0123456789', '--json']);
    expect(JSON.parse(created.stdout)).toMatchObject({ key: 'sk-chosen-value-0123456789', tenant: 'default', models: ['*'] });

    // npm start provisions its kept dev key on every start: the same key again is the same record, not a second one.
    const again = await sirocco(['create', '--url', edgeUrl, '--key', 'sk-chosen-value-0123456789', '--json']);
    const { id } = JSON.parse(again.stdout) as { id: string };
    expect(id).toBe((JSON.parse(created.stdout) as { id: string }).id);
    const listed = JSON.parse((await sirocco(['list', '--url', edgeUrl, '--json'])).stdout) as Array<{ id: string }>;
    expect(listed.filter((key) => key.id === id)).toHaveLength(1);
  });

  it('reads the admin secret from the dev-vars file (where npm start keeps it) when the environment has none', async () => {
    const devVars = join(persistTo, 'dev.vars');
    await writeDevVars({ SIROCCO_ADMIN_SECRET: ADMIN_SECRET }, devVars);
    const listed = await sirocco(['list', '--url', edgeUrl, '--json'], { SIROCCO_ADMIN_SECRET: '', SIROCCO_DEV_VARS: devVars });
    expect(listed).toMatchObject({ code: 0 });
    expect(JSON.parse(listed.stdout)).toEqual(expect.any(Array));
  });

  it('explains every mistake with a message and a non-zero exit code', async () => {
    const noSecret = await sirocco(['list', '--url', edgeUrl], {
      SIROCCO_ADMIN_SECRET: '',
      SIROCCO_DEV_VARS: join(persistTo, 'no-such.vars'),
    });
    expect(noSecret).toMatchObject({ code: 2, stderr: expect.stringMatching(/set SIROCCO_ADMIN_SECRET/) });

    const wrongSecret = await sirocco(['list', '--url', edgeUrl], { SIROCCO_ADMIN_SECRET: 'nope' });
    expect(wrongSecret).toMatchObject({ code: 1, stderr: expect.stringMatching(/HTTP 401.*invalid admin secret/) });

    const unreachable = await sirocco(['list', '--url', `http://127.0.0.1:${await freePort()}`]);
    expect(unreachable).toMatchObject({ code: 1, stderr: expect.stringMatching(/cannot reach the edge/) });

    expect(await sirocco(['create', '--url', edgeUrl, '--rpm', 'lots'])).toMatchObject({
      code: 2,
      stderr: expect.stringMatching(/--rpm must be an integer/),
    });
    expect(await sirocco(['create', '--url', edgeUrl, '--key', 'short'])).toMatchObject({
      code: 1,
      stderr: expect.stringMatching(/HTTP 422.*key/),
    });
    expect(await sirocco(['revoke', 'xyz', '--url', edgeUrl])).toMatchObject({ code: 2, stderr: expect.stringMatching(/16 hex digits/) });
    expect(await sirocco(['revoke', '0123456789abcdef', '--url', edgeUrl])).toMatchObject({
      code: 1,
      stderr: expect.stringMatching(/HTTP 404/),
    });
    expect(await sirocco(['rotate'])).toMatchObject({ code: 2, stderr: expect.stringMatching(/unknown action "rotate"/) });
    expect(await sirocco(['list', '--url', 'not a url'])).toMatchObject({ code: 2, stderr: expect.stringMatching(/--url must be/) });
  });
});
