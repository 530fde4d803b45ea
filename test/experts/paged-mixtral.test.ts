/**
 * Mixtral with experts paged from disk (`loadModel(dir, { expertCacheMb })`) on the golden
 * checkpoint: logits are bit-identical whatever the budget (two experts, half, all), close to
 * the float64 reference, a budget below one layer's top-2 experts is refused at load, and a
 * missing expert file fails only the forward steps that route to it.
 */
import { readFile, rm, mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertCheckpoint } from '../../sidecar/convert.ts';
import { ExpertStore } from '../../sidecar/expert-store.ts';
import { loadModel } from '../../sidecar/model-runtime.ts';

const GOLDEN = join(import.meta.dirname, '../fixtures/golden/tiny-mixtral');
const MiB = 1024 * 1024;

interface GoldenCase {
  tokens: number[];
  logits: number[][];
  experts: number[][][];
}

let work: string;
let storeDir: string;
let expertBytes: number;
let cases: GoldenCase[];

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'sirocco-paged-mixtral-'));
  storeDir = join(work, 'store');
  await convertCheckpoint({ from: join(GOLDEN, 'native'), to: storeDir, precision: 'fp32' });
  const store = await ExpertStore.open(storeDir);
  expect(store.bits).toBe(8); // fp32 stores page int8 experts (int4 stores: paged-mixtral-int4.test.ts)
  expertBytes = store.expertBytes;
  cases = (JSON.parse(await readFile(join(GOLDEN, 'golden.json'), 'utf8')) as { cases: GoldenCase[] }).cases;
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** Every golden case through one runtime: prefill all but the last token, then decode it. */
async function logitsAt(budgetMb: number) {
  const runtime = await loadModel(storeDir, { expertCacheMb: budgetMb, threads: 1 });
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
    let agree = 0;
    let total = 0;
    cases.forEach(({ logits }, c) => {
      const ours = [rows[2 * c]!, rows[2 * c + 1]!];
      const vocab = logits[0]!.length;
      logits.forEach((reference, t) => {
        const row = t < logits.length - 1 ? ours[0]!.subarray(t * vocab, (t + 1) * vocab) : ours[1]!;
        const argmax = (values: ArrayLike<number>) => Array.prototype.indexOf.call(values, Math.max(...Array.from(values)));
        agree += argmax(row) === argmax(reference) ? 1 : 0;
        total += 1;
      });
    });
    expect(agree / total).toBeGreaterThanOrEqual(0.9);
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
