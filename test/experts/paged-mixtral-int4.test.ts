/**
 * Mixtral int4 stores page int4 experts (experts-int4/, widened to int8 just before each expert
 * runs): on the golden checkpoint converted at precision int4, logits are bit-identical whatever
 * the budget (two experts, half, all), close enough to the float64 reference, and a missing int4
 * expert file fails only the forward steps that route to it.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertCheckpoint } from '../../sidecar/convert.ts';
import { ExpertStore, expertFileBytes } from '../../sidecar/expert-store.ts';
import { loadModel } from '../../sidecar/model-runtime.ts';
import { GOLDEN_MIXTRAL, goldenLogits, readGoldenCases, topOneAgreement, type GoldenCase } from './golden-mixtral.ts';

const MiB = 1024 * 1024;

let work: string;
let storeDir: string;
let expertBytes: number;
let cases: GoldenCase[];

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'sirocco-paged-mixtral-int4-'));
  storeDir = join(work, 'store');
  await convertCheckpoint({ from: join(GOLDEN_MIXTRAL, 'native'), to: storeDir, precision: 'int4' });
  expertBytes = (await ExpertStore.open(storeDir)).expertBytes;
  cases = await readGoldenCases();
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** Null: the engine's resident int4 experts. */
const logitsAt = (budgetMb: number | null) => goldenLogits(storeDir, cases, budgetMb);

describe('Mixtral int4 store with paged experts', () => {
  it('pages int4 experts: experts-int4/ only, files about half the int8 size', async () => {
    const store = await ExpertStore.open(storeDir);
    expect(store.bits).toBe(4);
    expect(store.index.quantization).toBe('int4-per-column');
    expect(expertBytes).toBe(expertFileBytes(64, 160, 4));
    expect(expertBytes).toBeLessThan(0.55 * expertFileBytes(64, 160, 8));
    const files = await readdir(storeDir);
    expect(files).toContain('experts-int4');
    expect(files).not.toContain('experts-int8');
  });

  it('gives bit-identical logits with budgets of two experts, half and all of them', async () => {
    const allMb = (16 * expertBytes) / MiB;
    const all = await logitsAt(allMb);
    for (const budgetMb of [(2 * expertBytes) / MiB, allMb / 2]) {
      const run = await logitsAt(budgetMb);
      run.rows.forEach((row, i) => expect(Buffer.from(row.buffer).equals(Buffer.from(all.rows[i]!.buffer)), `budget ${budgetMb} MiB, row ${i}`).toBe(true));
      expect(run.stats!.misses).toBeGreaterThan(all.stats!.misses);
      expect(run.stats!.residentBytes).toBeLessThanOrEqual(budgetMb * MiB);
    }
    // The cache is charged the int4 file size per expert.
    expect(all.stats).toMatchObject({ budgetBytes: allMb * MiB, bytesPagedIn: 16 * expertBytes });
    expect(all.rows.every((row) => row.every(Number.isFinite))).toBe(true);
  });

  it('stays close to the float64 reference: top-1 agrees on ≥ 70% of positions, within 10 points of the resident int4 engine', async () => {
    const paged = topOneAgreement((await logitsAt((4 * expertBytes) / MiB)).rows, cases);
    const resident = topOneAgreement((await logitsAt(null)).rows, cases);
    // Measured on the golden Mixtral (58 positions): paged int4 45/58 = 0.776, resident int4 engine
    // 48/58 = 0.828; fp32 and int8-paged stores agree on 58/58. The misses sit where the reference's
    // top-2 logits are within 0.4–12% of the largest |logit| (median margin there ≈ 9%): a tiny random
    // model, so 4-bit weights (≈ 10% RMS error per weight) flip near-ties. 0.7 (41/58) leaves four
    // more flips of margin for other CPUs' kernels; a packing or scale bug drops far below (the
    // random-weight baseline is ~1/512).
    expect(paged).toBeGreaterThanOrEqual(0.7);
    expect(resident - paged).toBeLessThanOrEqual(0.1);
  });

  it('gives the same logits when forward passes overlap (each run in flight widens into its own scratch)', async () => {
    const runtime = await loadModel(storeDir, { expertCacheMb: (16 * expertBytes) / MiB, threads: 1 });
    try {
      const one = async ({ tokens }: GoldenCase) => {
        const sequence = runtime.createSequence();
        const [logits] = await runtime.forward([{ sequence, tokens }], { allPositions: true });
        runtime.releaseSequence(sequence);
        return logits!;
      };
      const sequential: Float32Array[] = [];
      for (const c of cases) sequential.push(await one(c));
      const overlapped = await Promise.all(cases.map(one));
      overlapped.forEach((row, i) => expect(Buffer.from(row.buffer).equals(Buffer.from(sequential[i]!.buffer)), `case ${i}`).toBe(true));
    } finally {
      await runtime.dispose();
    }
  });

  it('fails only the steps that route to a missing int4 expert file, naming it, and keeps serving', async () => {
    await rm(join(storeDir, 'experts-int4', 'L1-E6.bin'));
    const runtime = await loadModel(storeDir, { expertCacheMb: (4 * expertBytes) / MiB, threads: 1 });
    try {
      // Golden routing says which cases' tokens reach layer 1's expert 6 (int4 attention could route
      // differently, but then one of the two expectations below fails rather than passing vacuously).
      const usesE6 = ({ experts }: GoldenCase) => experts[1]!.some((pair) => pair.includes(6));
      const broken = cases.find(usesE6)!;
      const fine = cases.find((c) => !usesE6(c)) ?? { tokens: [1], experts: [] };
      const bad = runtime.createSequence();
      await expect(runtime.forward([{ sequence: bad, tokens: broken.tokens }])).rejects.toMatchObject({
        type: 'model_error',
        message: expect.stringMatching(/cannot read expert file .*experts-int4\/L1-E6\.bin: ENOENT/),
      });
      const good = runtime.createSequence();
      const [logits] = await runtime.forward([{ sequence: good, tokens: fine.tokens }]);
      expect(logits!.every(Number.isFinite)).toBe(true);
    } finally {
      await runtime.dispose();
    }
  });
});
