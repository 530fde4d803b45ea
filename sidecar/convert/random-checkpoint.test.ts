import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Checkpoint } from '../formats/checkpoint.ts';
import { BENCH_1B_SHAPE, type ModelShape, writeRandomCheckpoint } from './random-checkpoint.ts';

const DENSE: ModelShape = {
  dim: 64,
  nLayers: 2,
  nHeads: 4,
  nKvHeads: 2,
  headDim: 16,
  hiddenDim: 96,
  vocabSize: 512,
  slidingWindow: 8,
  ropeTheta: 1e4,
};
const MOE: ModelShape = { ...DENSE, slidingWindow: null, ropeTheta: 1e6, numExperts: 4, expertsPerToken: 2, contextLength: 1024 };

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'sirocco-random-checkpoint-'));
});
afterAll(() => rm(root, { recursive: true, force: true }));

async function folderDigest(dir: string): Promise<Record<string, string>> {
  const digest: Record<string, string> = {};
  for (const file of (await readdir(dir)).sort())
    digest[file] = createHash('sha256')
      .update(await readFile(join(dir, file)))
      .digest('hex');
  return digest;
}

function stats(values: Float32Array): { mean: number; std: number } {
  let sum = 0;
  let squares = 0;
  for (const v of values) {
    sum += v;
    squares += v * v;
  }
  const mean = sum / values.length;
  return { mean, std: Math.sqrt(squares / values.length - mean * mean) };
}

describe('writeRandomCheckpoint', () => {
  it('writes the same bytes for the same shape and seed, and other bytes for another seed', async () => {
    await writeRandomCheckpoint(join(root, 'a'), DENSE, 11);
    await writeRandomCheckpoint(join(root, 'b'), DENSE, 11);
    await writeRandomCheckpoint(join(root, 'c'), DENSE, 12);
    const a = await folderDigest(join(root, 'a'));
    expect(await folderDigest(join(root, 'b'))).toEqual(a);
    const c = await folderDigest(join(root, 'c'));
    expect(c['params.json']).toBe(a['params.json']);
    expect(c['consolidated-00001-of-00004.safetensors']).not.toBe(a['consolidated-00001-of-00004.safetensors']);
    await writeRandomCheckpoint(join(root, 'moe-a'), MOE, 11);
    await writeRandomCheckpoint(join(root, 'moe-b'), MOE, 11);
    expect(await folderDigest(join(root, 'moe-b'))).toEqual(await folderDigest(join(root, 'moe-a')));
  });

  it('writes a native checkpoint that the engine opens, one shard per layer', async () => {
    const files = await writeRandomCheckpoint(join(root, 'dense'), DENSE, 1);
    expect(files.map((f) => f.split('/').at(-1))).toEqual([
      'consolidated-00001-of-00004.safetensors',
      'consolidated-00002-of-00004.safetensors',
      'consolidated-00003-of-00004.safetensors',
      'consolidated-00004-of-00004.safetensors',
    ]);
    const checkpoint = await Checkpoint.open(join(root, 'dense'));
    try {
      expect(checkpoint.layout).toBe('native');
      expect(checkpoint.config).toMatchObject({
        architecture: 'mistral',
        dim: 64,
        nLayers: 2,
        nHeads: 4,
        nKvHeads: 2,
        headDim: 16,
        hiddenDim: 96,
        vocabSize: 512,
        slidingWindow: 8,
        ropeTheta: 1e4,
      });
      // Linear weights and embeddings: mean 0, standard deviation 0.02 (to BF16 precision); norms 1.
      for (const name of ['tok_embeddings.weight', 'layers.1.attention.wq.weight', 'layers.0.feed_forward.w2.weight', 'output.weight']) {
        const { mean, std } = stats(await checkpoint.read(name));
        expect(Math.abs(mean)).toBeLessThan(0.002);
        expect(std).toBeGreaterThan(0.019);
        expect(std).toBeLessThan(0.021);
      }
      expect(new Set(await checkpoint.read('layers.0.attention_norm.weight'))).toEqual(new Set([1]));
      // Each tensor has its own stream: two same-shaped tensors differ.
      expect(await checkpoint.read('layers.0.attention.wk.weight')).not.toEqual(await checkpoint.read('layers.0.attention.wv.weight'));
    } finally {
      await checkpoint.close();
    }
  });

  it('writes Mixtral checkpoints with a router and experts, without a sliding window', async () => {
    await writeRandomCheckpoint(join(root, 'moe'), MOE, 2);
    const params = JSON.parse(await readFile(join(root, 'moe', 'params.json'), 'utf8')) as Record<string, unknown>;
    expect(params).toMatchObject({
      sliding_window: null,
      rope_theta: 1e6,
      max_seq_len: 1024,
      moe: { num_experts: 4, num_experts_per_tok: 2 },
    });
    const checkpoint = await Checkpoint.open(join(root, 'moe'));
    try {
      expect(checkpoint.config).toMatchObject({
        architecture: 'mixtral',
        numExperts: 4,
        expertsPerToken: 2,
        slidingWindow: null,
        contextLength: 1024,
      });
      expect((await checkpoint.read('layers.1.feed_forward.experts.3.w1.weight')).length).toBe(96 * 64);
      expect((await checkpoint.read('layers.0.feed_forward.gate.weight')).length).toBe(4 * 64);
    } finally {
      await checkpoint.close();
    }
  });

  it('describes the 1.0B benchmark shape', () => {
    const { dim, nLayers, nHeads, nKvHeads, headDim, hiddenDim, vocabSize } = BENCH_1B_SHAPE;
    const perLayer = dim * nHeads * headDim * 2 + dim * nKvHeads * headDim * 2 + 3 * dim * hiddenDim + 2 * dim;
    const parameters = nLayers * perLayer + 2 * vocabSize * dim + dim;
    expect(parameters / 1e9).toBeCloseTo(1.0, 1);
  });

  it('rejects a seed that is not a non-negative integer', async () => {
    await expect(writeRandomCheckpoint(join(root, 'bad'), DENSE, -1)).rejects.toThrow(/seed must be a non-negative integer/);
  });
});
