/**
 * Mixtral with experts paged from disk (`loadModel(dir, { expertCacheMb })`) on the golden
 * checkpoint: logits are bit-identical whatever the budget (two experts, half, all), close to
 * the float64 reference, a budget below one layer's top-2 experts is refused at load, and a
 * missing expert file fails only the forward steps that route to it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  convertGoldenMixtral,
  expectBitIdenticalAcrossBudgets,
  expectMissingExpertFailsOnlyItsSteps,
  type GoldenCase,
  goldenLogits,
  topOneAgreement,
} from '../../../test/support/golden-mixtral.ts';
import { loadModel } from '../model-runtime.ts';

const MiB = 1024 * 1024;

let storeDir: string;
let expertBytes: number;
let cases: GoldenCase[];
let cleanup: () => Promise<void>;

beforeAll(async () => {
  const golden = await convertGoldenMixtral('fp32');
  ({ storeDir, expertBytes, cases, cleanup } = golden);
  expect(golden.store.bits).toBe(8); // fp32 stores page int8 experts (int4 stores: paged-mixtral-int4.test.ts)
});

afterAll(() => cleanup());

const logitsAt = (budgetMb: number) => goldenLogits(storeDir, cases, budgetMb);

describe('Mixtral with paged experts', () => {
  it('gives bit-identical logits with budgets of two experts, half and all of them', async () => {
    const stats = await expectBitIdenticalAcrossBudgets(storeDir, cases, expertBytes);
    expect(stats.prefetchIssued).toBeGreaterThan(0);
  });

  it('stays close to the float64 reference (fp32 attention, int8 paged experts): top-1 agrees on ≥ 90% of positions', async () => {
    const { rows } = await logitsAt((4 * expertBytes) / MiB);
    expect(topOneAgreement(rows, cases)).toBeGreaterThanOrEqual(0.9);
  });

  it("refuses, at load, a budget smaller than one layer's top-2 experts", async () => {
    await expect(loadModel(storeDir, { expertCacheMb: (1.5 * expertBytes) / MiB })).rejects.toThrow(
      /--expert-cache-mb [\d.]+ is smaller than one layer's top-2 experts .*use at least [\d.]+/,
    );
  });

  it('fails only the steps that route to a missing expert file, naming it', async () => {
    await expectMissingExpertFailsOnlyItsSteps(storeDir, 'experts-int8', cases, expertBytes);
  });
});
