/**
 * scripts/make-mixtral-shape.ts writes a paged-only Mixtral store straight in quantised form (int4
 * attention graphs, random int8 expert files). On the tiny shape: it loads with
 * `--expert-cache-mb`, decodes, and stays bit-identical across budgets.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ExpertStore } from '../../sidecar/expert-store.ts';
import { loadModel } from '../../sidecar/model-runtime.ts';
import { SHAPES, makeMixtralShape } from '../../scripts/make-mixtral-shape.ts';

let work: string;
let storeDir: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'sirocco-mixtral-shape-'));
  storeDir = join(work, 'store');
  await makeMixtralShape(storeDir, SHAPES.tiny!, 3);
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function decode(budgetMb: number): Promise<Float32Array[]> {
  const runtime = await loadModel(storeDir, { expertCacheMb: budgetMb, threads: 1 });
  try {
    const sequence = runtime.createSequence();
    const out = await runtime.forward([{ sequence, tokens: [1, 17, 300, 42] }]);
    for (const token of [5, 99, 411, 7]) out.push(...(await runtime.forward([{ sequence, tokens: [token] }])));
    return out;
  } finally {
    await runtime.dispose();
  }
}

it('writes a paged-only store: per-layer int4 graphs, head, and one int8 file per expert', async () => {
  const files = await readdir(storeDir);
  expect(files).toEqual(expect.arrayContaining(['manifest.json', 'layer.0.onnx', 'layer.1.onnx', 'head.onnx', 'experts-int8']));
  expect(files.some((f) => f.startsWith('expert.'))).toBe(false);
  const store = await ExpertStore.open(storeDir);
  expect(store.index).toMatchObject({ dim: 64, ffn: 160, layers: 2, experts: 8, topK: 2 });
  expect((await readdir(join(storeDir, 'experts-int8'))).filter((f) => f.endsWith('.bin'))).toHaveLength(16);
});

it('decodes with paged experts, bit-identically for a two-expert budget and for all experts', async () => {
  const store = await ExpertStore.open(storeDir);
  const all = await decode((16 * store.expertBytes) / (1024 * 1024));
  const two = await decode((2 * store.expertBytes) / (1024 * 1024));
  expect(all.every((row) => row.length === 512 && row.every(Number.isFinite))).toBe(true);
  two.forEach((row, i) => expect(Buffer.from(row.buffer).equals(Buffer.from(all[i]!.buffer))).toBe(true));
});
