import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseDevVars, readDevVars, writeDevVars } from './dev-vars.ts';

let folder: string;
let file: string;
beforeEach(async () => {
  folder = await mkdtemp(join(tmpdir(), 'sirocco-dev-vars-'));
  file = join(folder, '.dev.vars');
});
afterEach(async () => {
  await rm(folder, { recursive: true, force: true });
});

describe('.dev.vars', () => {
  it('reads nothing from a file that does not exist', async () => {
    expect(await readDevVars(file)).toEqual(new Map());
  });

  it('round-trips values, awkward characters included, in a file only its owner can read', async () => {
    const values = { SIROCCO_ADMIN_SECRET: 'a1b2c3', SIROCCO_DEV_KEY: "sk-dev-$HOME-'quoted'", OTHER: 'x=y # not a comment' };
    await writeDevVars(values, file);
    expect(Object.fromEntries(await readDevVars(file))).toEqual(values);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
  });

  it('keeps the lines it was not asked to change and rewrites the ones it was, in place', async () => {
    await writeFile(file, '# my own secrets\nMISTRAL_API_KEY=abc\nSIROCCO_ADMIN_SECRET=old\n', { mode: 0o644 });
    await writeDevVars({ SIROCCO_ADMIN_SECRET: 'new', SIROCCO_DEV_KEY: 'sk-dev-0123456789abcdefghij' }, file);
    expect(await readFile(file, 'utf8')).toBe(
      "# my own secrets\nMISTRAL_API_KEY=abc\nSIROCCO_ADMIN_SECRET='new'\nSIROCCO_DEV_KEY='sk-dev-0123456789abcdefghij'\n",
    );
    // An existing, wider file is tightened: it now holds secrets.
    expect((await stat(file)).mode & 0o777).toBe(0o600);
  });

  it('parses what wrangler parses: quotes, export, comments, the last assignment winning', () => {
    const vars = parseDevVars(
      ['# comment', 'export A="one"', "B='two'", 'C=three # trailing comment', 'not a line', 'A=four', 'D=`with \\$dollar`'].join('\n'),
    );
    expect(Object.fromEntries(vars)).toEqual({ A: 'four', B: 'two', C: 'three', D: 'with $dollar' });
  });
});
