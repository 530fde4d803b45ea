import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ApiKeyValueSchema } from '../shared/api-key.ts';
import { checkDevEnvironment, type DevEnvironmentInput } from './dev-environment.ts';

const folder = mkdtempSync(join(tmpdir(), 'sirocco-dev-environment-'));
const check = (overrides: Partial<DevEnvironmentInput> = {}) =>
  checkDevEnvironment({
    portFlag: undefined,
    sidecarPortsFlag: undefined,
    sidecarCount: 2,
    env: {},
    devVarsFile: join(folder, '.dev.vars'),
    saved: new Map(),
    ...overrides,
  });

describe('checkDevEnvironment', () => {
  it('takes the defaults, PORT, and the flags over PORT', () => {
    expect(check()).toEqual({ edgePort: 8787, sidecarPorts: undefined, problems: [] });
    expect(check({ env: { PORT: '9000' } }).edgePort).toBe(9000);
    expect(check({ env: { PORT: '9000' }, portFlag: '9100', sidecarPortsFlag: '9101,9102' })).toEqual({
      edgePort: 9100,
      sidecarPorts: [9101, 9102],
      problems: [],
    });
  });

  it('names a bad port by the variable or flag it came from', () => {
    expect(check({ env: { PORT: 'abc' } }).problems).toEqual([`PORT must be an integer from 1 to 65535 (the edge's port), got abc`]);
    expect(check({ portFlag: '70000' }).problems).toEqual([`--port must be an integer from 1 to 65535 (the edge's port), got 70000`]);
    expect(check({ sidecarPortsFlag: '8081' }).problems).toEqual(['--sidecar-ports takes 2 ports, e.g. 8081,8082; got "8081"']);
    expect(check({ sidecarPortsFlag: '8081,x' }).problems).toEqual([
      '--sidecar-ports must be integers from 1 to 65535, e.g. 8081,8082; got "8081,x"',
    ]);
    expect(check({ env: { PORT: '8081' }, sidecarPortsFlag: '8081,8082' }).problems).toEqual([
      'port 8081 is given twice (edge PORT and --sidecar-ports): each process needs its own',
    ]);
  });

  it('refuses a dev key the edge would refuse, without showing it, from the environment or the dev-vars file', () => {
    const [problem] = check({ env: { SIROCCO_DEV_KEY: 'sk-short' } }).problems;
    expect(problem).toBe(
      'SIROCCO_DEV_KEY must be 20 to 256 printable ASCII characters without spaces, as the edge accepts keys; it has 8 characters',
    );
    expect(problem).not.toContain('sk-short');
    expect(check({ saved: new Map([['SIROCCO_DEV_KEY', 'sk dev key with spaces 123']]) }).problems).toEqual([
      `SIROCCO_DEV_KEY (in ${join(folder, '.dev.vars')}) must be 20 to 256 printable ASCII characters without spaces, as the edge accepts keys; it has 26 characters, some of them spaces or not printable`,
    ]);
    // The environment wins over the file, as it does when the stack starts.
    expect(check({ env: { SIROCCO_DEV_KEY: 'sk-dev-0123456789abcdef' }, saved: new Map([['SIROCCO_DEV_KEY', 'bad']]) }).problems).toEqual(
      [],
    );
  });

  it("accepts exactly the keys the edge's key rule accepts (shared/api-key.ts, used by POST /admin/keys)", () => {
    for (const key of ['a'.repeat(19), 'a'.repeat(20), 'a'.repeat(256), 'a'.repeat(257), `${'a'.repeat(20)} b`, `${'a'.repeat(20)}é`]) {
      const edgeAccepts = ApiKeyValueSchema.safeParse(key).success;
      expect(check({ env: { SIROCCO_DEV_KEY: key } }).problems.length === 0, `${key.length} characters`).toBe(edgeAccepts);
    }
  });

  it('refuses secrets that cannot go into a header or are too short to keep', () => {
    expect(check({ env: { SIROCCO_SIDECAR_SECRET: 'abc' } }).problems).toEqual([
      'SIROCCO_SIDECAR_SECRET must be 16 to 1024 printable ASCII characters without spaces (it goes into HTTP headers; `openssl rand -hex 32` makes one), or unset to have one generated; it has 3',
    ]);
    expect(check({ env: { SIROCCO_ADMIN_SECRET: 'line one\nline two secret' } }).problems[0]).toMatch(/^SIROCCO_ADMIN_SECRET must be/);
    expect(check({ env: { SIROCCO_ADMIN_SECRET: 'f'.repeat(64), SIROCCO_SIDECAR_SECRET: 'e'.repeat(64) } }).problems).toEqual([]);
  });

  it('refuses a SIROCCO_HOME that is a file and a dev-vars file that cannot be written', () => {
    const file = join(folder, 'a-file');
    writeFileSync(file, '');
    expect(check({ env: { SIROCCO_HOME: file } }).problems).toEqual([
      `SIROCCO_HOME names "${file}", which is not a folder (the demo models are built there)`,
    ]);
    expect(check({ env: { SIROCCO_DEV_VARS: folder }, devVarsFile: folder }).problems).toEqual([
      `SIROCCO_DEV_VARS names "${folder}", which is a folder, not a file`,
    ]);
    expect(check({ env: { SIROCCO_DEV_VARS: join(file, 'x') }, devVarsFile: join(folder, 'missing/.dev.vars') }).problems).toEqual([
      `SIROCCO_DEV_VARS "${join(folder, 'missing/.dev.vars')}": its folder does not exist`,
    ]);
  });
});
