/**
 * The golden tiny Mixtral for the paged-expert tests: its reference cases, logits of every case
 * through one runtime (paged at a budget, or with resident experts), top-1 agreement with the
 * float64 reference, and the guarantees every paged expert format shares.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'vitest';
import { convertCheckpoint } from '../../sidecar/convert/convert.ts';
import { ExpertStore, loadModel } from '../../sidecar/engine/index.ts';
import type { Precision } from '../../sidecar/formats/quantize.ts';

export const GOLDEN_MIXTRAL = join(import.meta.dirname, '../fixtures/golden/tiny-mixtral');

export interface GoldenCase {
  tokens: number[];
  logits: number[][];
  /** Per layer, per token: the reference's top-2 expert ids. */
  experts: number[][][];
}

export async function readGoldenCases(): Promise<GoldenCase[]> {
  return (JSON.parse(await readFile(join(GOLDEN_MIXTRAL, 'golden.json'), 'utf8')) as { cases: GoldenCase[] }).cases;
}

/** The golden Mixtral converted at `precision` into a temp folder (`cleanup` removes it). */
export async function convertGoldenMixtral(precision: Precision) {
  const work = await mkdtemp(join(tmpdir(), `sirocco-golden-mixtral-${precision}-`));
  const storeDir = join(work, 'store');
  await convertCheckpoint({ from: join(GOLDEN_MIXTRAL, 'native'), to: storeDir, precision });
  const store = await ExpertStore.open(storeDir);
  return {
    storeDir,
    store,
    expertBytes: store.expertBytes,
    cases: await readGoldenCases(),
    cleanup: () => rm(work, { recursive: true, force: true }),
  };
}

/**
 * Every case through one runtime: prefill all but the last token (all positions), then decode
 * the last one; two rows per case. `budgetMb` null: the engine's resident experts.
 */
export async function goldenLogits(storeDir: string, cases: GoldenCase[], budgetMb: number | null) {
  const runtime = await loadModel(storeDir, { ...(budgetMb === null ? {} : { expertCacheMb: budgetMb }), threads: 1 });
  try {
    const rows: Float32Array[] = [];
    for (const { tokens } of cases) {
      const sequence = runtime.createSequence();
      const [prefill] = await runtime.forward([{ sequence, tokens: tokens.slice(0, -1) }], { allPositions: true });
      const [last] = await runtime.forward([{ sequence, tokens: tokens.slice(-1) }]);
      rows.push(prefill!, last!);
      runtime.releaseSequence(sequence);
    }
    return { rows, stats: runtime.expertCacheStats?.() ?? null };
  } finally {
    await runtime.dispose();
  }
}

/** Share of positions whose argmax matches the reference's (rows as `goldenLogits` returns them). */
export function topOneAgreement(rows: Float32Array[], cases: GoldenCase[]): number {
  const argmax = (values: ArrayLike<number>) => Array.prototype.indexOf.call(values, Math.max(...Array.from(values)));
  let agree = 0;
  let total = 0;
  cases.forEach(({ logits }, c) => {
    const vocab = logits[0]!.length;
    logits.forEach((reference, t) => {
      const row = t < logits.length - 1 ? rows[2 * c]!.subarray(t * vocab, (t + 1) * vocab) : rows[2 * c + 1]!;
      agree += argmax(row) === argmax(reference) ? 1 : 0;
      total += 1;
    });
  });
  return agree / total;
}

const MiB = 1024 * 1024;

/**
 * The paged-expert guarantees every expert format gives on the golden Mixtral, as assertions:
 * logits bit-identical with budgets of two experts, half and all of them (16 experts) — and with
 * no budget at all where the store's resident experts are the same blocks (`noBudgetToo`: int4
 * and int8 stores) — the smaller budgets paging more and staying within budget; returns the
 * all-experts run's stats.
 */
export async function expectBitIdenticalAcrossBudgets(storeDir: string, cases: GoldenCase[], expertBytes: number, noBudgetToo = false) {
  const allMb = (16 * expertBytes) / MiB;
  const all = await goldenLogits(storeDir, cases, allMb);
  if (noBudgetToo) {
    const resident = await goldenLogits(storeDir, cases, null);
    for (const [i, row] of resident.rows.entries()) {
      expect(Buffer.from(row.buffer).equals(Buffer.from(all.rows[i]!.buffer)), `no budget, row ${i}`).toBe(true);
    }
  }
  for (const budgetMb of [(2 * expertBytes) / MiB, allMb / 2]) {
    const run = await goldenLogits(storeDir, cases, budgetMb);
    for (const [i, row] of run.rows.entries()) {
      expect(Buffer.from(row.buffer).equals(Buffer.from(all.rows[i]!.buffer)), `budget ${budgetMb} MiB, row ${i}`).toBe(true);
    }
    expect(run.stats!.misses).toBeGreaterThan(all.stats!.misses);
    expect(run.stats!.residentBytes).toBeLessThanOrEqual(budgetMb * MiB);
  }
  // The cache is charged each expert's file size.
  expect(all.stats).toMatchObject({ budgetBytes: allMb * MiB, bytesPagedIn: 16 * expertBytes });
  expect(all.rows.every((row) => row.every(Number.isFinite))).toBe(true);
  return all.stats!;
}

/**
 * Deletes layer 1's expert 6 from `<storeDir>/<folder>/` and checks that a forward step routed to
 * it fails with a model_error naming the file, while one that is not still runs. Golden routing
 * says which cases reach that expert (a quantised store could route differently, but then one of
 * the two expectations fails rather than passing vacuously).
 */
export async function expectMissingExpertFailsOnlyItsSteps(
  storeDir: string,
  folder: string,
  cases: GoldenCase[],
  expertBytes: number,
): Promise<void> {
  await rm(join(storeDir, folder, 'L1-E6.bin'));
  const runtime = await loadModel(storeDir, { expertCacheMb: (4 * expertBytes) / MiB, threads: 1 });
  try {
    const usesE6 = ({ experts }: GoldenCase) => experts[1]!.some((pair) => pair.includes(6));
    const broken = cases.find(usesE6)!;
    const fine = cases.find((c) => !usesE6(c)) ?? { tokens: [1], experts: [] };
    await expect(runtime.forward([{ sequence: runtime.createSequence(), tokens: broken.tokens }])).rejects.toMatchObject({
      type: 'model_error',
      message: expect.stringMatching(new RegExp(`expert file .*${folder}/L1-E6\\.bin cannot be read: ENOENT`)),
    });
    const [logits] = await runtime.forward([{ sequence: runtime.createSequence(), tokens: fine.tokens }]);
    expect(logits!.every(Number.isFinite)).toBe(true);
  } finally {
    await runtime.dispose();
  }
}
