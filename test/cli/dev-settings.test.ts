/**
 * `npm start` (`sirocco dev`) with a bad setting: one message naming the variable or flag, exit code 2, and nothing
 * started — no progress line, no dev-vars file written, its ports still free.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { freePort, isPortFree } from '../../cli/processes.ts';
import { runSiroccoWith } from '../support/cli.ts';

const folder = mkdtempSync(join(tmpdir(), 'sirocco-dev-settings-'));
afterAll(() => rmSync(folder, { recursive: true, force: true }));
const devVars = join(folder, '.dev.vars');

/** `sirocco dev` with `env` on top of a clean slate: no secrets or key from the caller's environment. */
function startDev(env: Record<string, string>, ...args: string[]) {
  return runSiroccoWith(
    {
      home: join(folder, 'home'),
      env: { SIROCCO_DEV_VARS: devVars, SIROCCO_ADMIN_SECRET: '', SIROCCO_SIDECAR_SECRET: '', SIROCCO_DEV_KEY: '', PORT: '', ...env },
    },
    'dev',
    ...args,
  );
}

describe('sirocco dev refuses bad settings before starting anything', () => {
  it.each<{ name: string; env: Record<string, string>; args: string[]; names: string }>([
    {
      name: 'a dev key shorter than the edge accepts',
      env: { SIROCCO_DEV_KEY: 'sk-dev-short' },
      args: [],
      names: 'SIROCCO_DEV_KEY must be 20 to 256',
    },
    { name: 'a port that is not one', env: { PORT: '80a' }, args: [], names: 'PORT must be an integer from 1 to 65535' },
    {
      name: 'a sidecar secret too short to keep',
      env: { SIROCCO_SIDECAR_SECRET: 'abc' },
      args: [],
      names: 'SIROCCO_SIDECAR_SECRET must be 16 to 1024',
    },
    { name: 'a sidecar port repeated', env: {}, args: ['--sidecar-ports', '8090,8090'], names: 'port 8090 is given twice' },
  ])('$name', async ({ env, args, names }) => {
    const edgePort = await freePort();
    const result = await startDev({ PORT: String(edgePort), ...env }, ...args);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^sirocco dev: nothing was started:\n {2}/);
    expect(result.stderr).toContain(names);
    expect(result.stdout).toBe('');
    expect(existsSync(devVars)).toBe(false);
    expect(await isPortFree(edgePort)).toBe(true);
  });

  it('never prints the refused key or secret', async () => {
    const result = await startDev({ SIROCCO_DEV_KEY: 'sk-secret-9', SIROCCO_ADMIN_SECRET: 'admin-secret-7' });
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('SIROCCO_DEV_KEY');
    expect(result.stderr).toContain('SIROCCO_ADMIN_SECRET');
    expect(result.stderr).not.toContain('sk-secret-9');
    expect(result.stderr).not.toContain('admin-secret-7');
  });
});
