/**
 * scripts/make-mixtral-shape.ts writes a paged-only Mixtral store straight in quantised form (int4
 * attention graphs, random int4 expert files by default, int8 with `--expert-bits 8`). On the tiny
 * shape: it loads with `--expert-cache-mb`, decodes, and stays bit-identical across budgets.
 */
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ExpertStore, expertBlocksInRowOrder, expertFileBytes, expertViews } from '../sidecar/engine/experts/expert-store.ts';
import { loadModel } from '../sidecar/engine/model-runtime.ts';
import { makeMixtralShape, SHAPES } from './make-mixtral-shape.ts';

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

it('writes a paged-only store: per-layer int4 graphs, head, and one int4 file per expert by default', async () => {
  const files = await readdir(storeDir);
  expect(files).toEqual(expect.arrayContaining(['manifest.json', 'layer.0.onnx', 'layer.1.onnx', 'head.onnx', 'experts-int4']));
  expect(files).not.toContain('experts-int8');
  expect(files.some((f) => f.startsWith('expert.'))).toBe(false);
  const store = await ExpertStore.open(storeDir);
  expect(store.bits).toBe(4);
  expect(store.index).toMatchObject({
    dim: 64,
    ffn: 160,
    layers: 2,
    experts: 8,
    topK: 2,
    quantization: 'q4_0',
    fileBytes: expertFileBytes(64, 160, 4),
  });
  expect((await readdir(join(storeDir, 'experts-int4'))).filter((f) => f.endsWith('.bin'))).toHaveLength(16);
});

it('fills Q4_0 experts with random nibbles for [-7, 7] centred on 0 (never -8, which would bias every weight), one scale for all', async () => {
  const bytes = new Uint8Array(await readFile(join(storeDir, 'experts-int4', 'L1-E3.bin')));
  const rowOrder = expertBlocksInRowOrder(expertViews(bytes, 64, 160, 4), 64, 160);
  const blocks = Buffer.concat([rowOrder.w13, rowOrder.w2]);
  expect(blocks.length).toBe((3 * 64 * 160 * 18) / 32);
  const counts = new Array<number>(16).fill(0);
  const scales = new Set<number>();
  for (let at = 0; at < blocks.length; at += 18) {
    scales.add(blocks[at]! | (blocks[at + 1]! << 8));
    for (const byte of blocks.subarray(at + 2, at + 18)) {
      counts[byte & 0x0f]! += 1;
      counts[byte >> 4]! += 1;
    }
  }
  expect(scales.size).toBe(1);
  expect(counts[0]).toBe(0); // nibble 0 is the value -8
  const nibbles = counts.reduce((sum, count) => sum + count, 0);
  const mean = counts.reduce((sum, count, nibble) => sum + count * (nibble - 8), 0) / nibbles;
  expect(Math.abs(mean)).toBeLessThan(0.15); // 6σ of a uniform [-7, 7] mean over 30720 nibbles (8 twice as likely)
  expect(counts.filter((count) => count > 0)).toHaveLength(15);
});

it('decodes with paged experts, bit-identically for a two-expert budget and for all experts', async () => {
  const store = await ExpertStore.open(storeDir);
  const all = await decode((16 * store.expertBytes) / (1024 * 1024));
  const two = await decode((2 * store.expertBytes) / (1024 * 1024));
  expect(all.every((row) => row.length === 512 && row.every(Number.isFinite))).toBe(true);
  for (const [i, row] of two.entries()) expect(Buffer.from(row.buffer).equals(Buffer.from(all[i]!.buffer))).toBe(true);
});

it('writes int8 expert files with --expert-bits 8, and they decode too', async () => {
  const int8Dir = join(work, 'int8');
  await makeMixtralShape(int8Dir, SHAPES.tiny!, 3, undefined, 8);
  expect(await readdir(int8Dir)).toEqual(expect.arrayContaining(['experts-int8']));
  expect(await readdir(int8Dir)).not.toContain('experts-int4');
  const store = await ExpertStore.open(int8Dir);
  expect(store.bits).toBe(8);
  expect(store.expertBytes).toBe(expertFileBytes(64, 160, 8));
  const runtime = await loadModel(int8Dir, { expertCacheMb: (2 * store.expertBytes) / (1024 * 1024), threads: 1 });
  try {
    const [logits] = await runtime.forward([{ sequence: runtime.createSequence(), tokens: [1, 17, 300, 42] }]);
    expect(logits!.length === 512 && logits!.every(Number.isFinite)).toBe(true);
  } finally {
    await runtime.dispose();
  }
});
