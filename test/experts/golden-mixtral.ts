/**
 * The golden tiny Mixtral for the paged-expert tests: its reference cases, logits of every case
 * through one runtime (paged at a budget, or with resident experts), and top-1 agreement with the
 * float64 reference.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadModel } from '../../sidecar/model-runtime.ts';

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
