/**
 * `npx sirocco logits --expert-cache-mb N` as outside checks run it: a real process on the golden
 * Mixtral checkpoint (fp32 by default: int8 experts are paged; --precision int4: int4 experts).
 * Fractional budgets work, logits are identical for a two-expert budget and a budget holding every
 * expert, and a budget below one layer's top-2 experts exits non-zero with a message naming the minimum.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { expertFileBytes } from '../../sidecar/engine/experts/expert-store.ts';

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, '../..');
const CHECKPOINT = join(ROOT, 'test/fixtures/golden/tiny-mixtral/native');
// `logits` converts a checkpoint at fp32 by default, whose store pages int8 experts; --precision int4 pages int4.
const EXPERT_MB = expertFileBytes(64, 160, 8) / (1024 * 1024);
const INT4_EXPERT_MB = expertFileBytes(64, 160, 4) / (1024 * 1024);

let home: string;
beforeAll(async () => {
  home = await mkdtemp(join(tmpdir(), 'sirocco-cli-experts-'));
});
afterAll(async () => {
  await rm(home, { recursive: true, force: true });
});

function logits(budgetMb: number, extra: string[] = []) {
  return run(
    process.execPath,
    ['bin/sirocco.mjs', 'logits', '--model', CHECKPOINT, '--tokens', '1,17,300,42', '--expert-cache-mb', String(budgetMb), ...extra],
    {
      cwd: ROOT,
      env: { ...process.env, SIROCCO_HOME: home },
      maxBuffer: 64 * 1024 * 1024,
    },
  );
}

it('prints the same logits with a two-expert budget as with every expert in memory', async () => {
  const all = JSON.parse((await logits(16 * EXPERT_MB + 0.001)).stdout) as { logits: number[][] };
  const two = JSON.parse((await logits(Math.ceil(2 * EXPERT_MB * 1e4) / 1e4)).stdout) as { logits: number[][] };
  expect(all.logits).toHaveLength(4);
  expect(all.logits[0]).toHaveLength(512);
  expect(two.logits).toEqual(all.logits);
  // It paged from the fp32 store it converted: experts-int8/ only.
  const stores = await readdir(join(home, 'stores'));
  expect(stores).toHaveLength(1);
  expect(await readdir(join(home, 'stores', stores[0]!))).toContain('experts-int8');
  expect(await readdir(join(home, 'stores', stores[0]!))).not.toContain('experts-int4');
});

it('with --precision int4, pages int4 experts and prints the same logits for two int4 experts as for all', async () => {
  const int4 = ['--precision', 'int4'];
  const all = JSON.parse((await logits(16 * INT4_EXPERT_MB + 0.001, int4)).stdout) as { logits: number[][] };
  // Two int4 experts: less than one int8 expert pair, so this only loads if the cache is charged int4 sizes.
  const twoMb = Math.ceil(2 * INT4_EXPERT_MB * 1e4) / 1e4;
  expect(twoMb).toBeLessThan(2 * EXPERT_MB);
  const two = JSON.parse((await logits(twoMb, int4)).stdout) as { logits: number[][] };
  expect(all.logits).toHaveLength(4);
  expect(two.logits).toEqual(all.logits);
  const stores = await readdir(join(home, 'stores'));
  const int4Store = stores.find((name) => name.endsWith('-int4'));
  expect(int4Store).toBeDefined();
  expect(await readdir(join(home, 'stores', int4Store!))).toContain('experts-int4');
});

it("refuses a budget below one layer's top-2 experts with a clear message", async () => {
  const failure = await logits(EXPERT_MB).then(
    () => null,
    (error: { code: number; stderr: string }) => error,
  );
  expect(failure?.code).not.toBe(0);
  expect(failure?.stderr).toMatch(/--expert-cache-mb [\d.]+ is smaller than one layer's top-2 experts .*use at least [\d.]+/);
});
