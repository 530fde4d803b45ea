/**
 * Mixtral with experts paged from disk (`loadModel(dir, { expertCacheMb })`) on the golden
 * checkpoint: logits are bit-identical whatever the budget (two experts, half, all), close to
 * the float64 reference, a budget below one layer's top-2 experts is refused at load, and a
 * missing expert file fails only the forward steps that route to it.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertCheckpoint } from '../../sidecar/convert.ts';
import { ExpertStore } from '../../sidecar/expert-store.ts';
import { loadModel } from '../../sidecar/model-runtime.ts';
import { GOLDEN_MIXTRAL, goldenLogits, readGoldenCases, topOneAgreement, type GoldenCase } from './golden-mixtral.ts';

const MiB = 1024 * 1024;

let work: string;
let storeDir: string;
let expertBytes: number;
let cases: GoldenCase[];

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'sirocco-paged-mixtral-'));
  storeDir = join(work, 'store');
  await convertCheckpoint({ from: join(GOLDEN_MIXTRAL, 'native'), to: storeDir, precision: 'fp32' });
  const store = await ExpertStore.open(storeDir);
  expect(store.bits).toBe(8); // fp32 stores page int8 experts (int4 stores: paged-mixtral-int4.test.ts)
  expertBytes = store.expertBytes;
  cases = await readGoldenCases();
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

const logitsAt = (budgetMb: number) => goldenLogits(storeDir, cases, budgetMb);

describe('Mixtral with paged experts', () => {
  it('gives bit-identical logits with budgets of two experts, half and all of them', async () => {
    const allMb = (16 * expertBytes) / MiB;
    const all = await logitsAt(allMb);
    for (const budgetMb of [(2 * expertBytes) / MiB, allMb / 2]) {
      const run = await logitsAt(budgetMb);
      run.rows.forEach((row, i) => expect(Buffer.from(row.buffer).equals(Buffer.from(all.rows[i]!.buffer)), `budget ${budgetMb} MiB, row ${i}`).toBe(true));
      expect(run.stats!.misses).toBeGreaterThan(all.stats!.misses);
      expect(run.stats!.residentBytes).toBeLessThanOrEqual(budgetMb * MiB);
    }
    expect(all.stats).toMatchObject({ budgetBytes: allMb * MiB, bytesPagedIn: 16 * expertBytes });
    expect(all.stats!.prefetchIssued).toBeGreaterThan(0);
  });

  it('stays close to the float64 reference (fp32 attention, int8 paged experts): top-1 agrees on ≥ 90% of positions', async () => {
    const { rows } = await logitsAt((4 * expertBytes) / MiB);
    expect(topOneAgreement(rows, cases)).toBeGreaterThanOrEqual(0.9);
  });

  it('refuses, at load, a budget smaller than one layer\'s top-2 experts', async () => {
    await expect(loadModel(storeDir, { expertCacheMb: (1.5 * expertBytes) / MiB })).rejects.toThrow(
      /--expert-cache-mb [\d.]+ is smaller than one layer's top-2 experts .*use at least [\d.]+/,
    );
  });

  it('fails only the steps that route to a missing expert file, naming it', async () => {
    await rm(join(storeDir, 'experts-int8', 'L1-E6.bin'));
    const runtime = await loadModel(storeDir, { expertCacheMb: (4 * expertBytes) / MiB, threads: 1 });
    try {
      // Golden routing says which cases' tokens reach layer 1's expert 6.
      const usesE6 = ({ experts }: GoldenCase) => experts[1]!.some((pair) => pair.includes(6));
      const broken = cases.find(usesE6)!;
      const fine = cases.find((c) => !usesE6(c)) ?? { tokens: [1], experts: [] };
      const bad = runtime.createSequence();
      await expect(runtime.forward([{ sequence: bad, tokens: broken.tokens }])).rejects.toMatchObject({
        type: 'model_error',
        message: expect.stringMatching(/experts-int8\/L1-E6\.bin: ENOENT/),
      });
      const good = runtime.createSequence();
      const [logits] = await runtime.forward([{ sequence: good, tokens: fine.tokens }]);
      expect(logits!.every(Number.isFinite)).toBe(true);
    } finally {
      await runtime.dispose();
    }
  });
});
