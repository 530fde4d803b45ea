/**
 * Checkpoints behind canonical names: the native and Hugging Face layouts of the same model read
 * to the same numbers once native wq/wk rows are permuted to rotate-half order; a sharded HF
 * checkpoint (model.safetensors.index.json) reads like a single file; the source hash is stable.
 */

import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Checkpoint, expectedTensors, interleavedToRotateHalf } from './checkpoint.ts';
import { SafetensorsFile, writeSafetensors } from './safetensors.ts';

const GOLDEN = new URL('../../test/fixtures/golden/', import.meta.url).pathname;
/** Bitwise equality of two float arrays (fast, unlike a deep equality over 10k elements). */
function same(a: Float32Array, b: Float32Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

const work = mkdtempSync(join(tmpdir(), 'sirocco-checkpoint-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('interleavedToRotateHalf', () => {
  it('moves even rows of each head to its first half and odd rows to its second', () => {
    // 2 heads × head_dim 4, one column: rows are numbered by their original index.
    const rows = Float32Array.from([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(Array.from(interleavedToRotateHalf(rows, 2, 4, 1))).toEqual([0, 2, 1, 3, 4, 6, 5, 7]);
  });
});

describe.each(['tiny-mistral', 'tiny-mixtral'])('%s', (model) => {
  it('reads every expected tensor identically from both layouts', async () => {
    const native = await Checkpoint.open(join(GOLDEN, model, 'native'));
    const hf = await Checkpoint.open(join(GOLDEN, model, 'hf'));
    for (const { name, shape } of expectedTensors(native.config)) {
      const a = await native.read(name);
      expect(a.length).toBe(shape.reduce((x, y) => x * y, 1));
      expect(same(await hf.read(name), a), name).toBe(true);
    }
    expect(await native.sourceHash()).toMatch(/^[0-9a-f]{24}$/);
    expect(await native.sourceHash()).toBe(await native.sourceHash());
    expect(await native.sourceHash()).not.toBe(await hf.sourceHash());
    await native.close();
    await hf.close();
  });
});

describe('sharded Hugging Face checkpoints', () => {
  it('follows model.safetensors.index.json across shards', async () => {
    const dir = join(work, 'sharded');
    cpSync(join(GOLDEN, 'tiny-mistral', 'hf', 'config.json'), join(dir, 'config.json'));
    const single = await SafetensorsFile.open(join(GOLDEN, 'tiny-mistral', 'hf', 'model.safetensors'));
    const names = [...single.tensors.keys()];
    const shards = [names.slice(0, 7), names.slice(7)];
    const weightMap: Record<string, string> = {};
    for (const [i, shard] of shards.entries()) {
      const file = `model-0000${i + 1}-of-00002.safetensors`;
      const tensors = [];
      for (const name of shard) {
        tensors.push({ name, dtype: 'BF16' as const, shape: single.tensors.get(name)!.shape, data: await single.readFloat32(name) });
        weightMap[name] = file;
      }
      await writeSafetensors(join(dir, file), tensors);
    }
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));

    const sharded = await Checkpoint.open(dir);
    const reference = await Checkpoint.open(join(GOLDEN, 'tiny-mistral', 'hf'));
    for (const { name } of expectedTensors(sharded.config))
      expect(same(await sharded.read(name), await reference.read(name)), name).toBe(true);
    await sharded.close();
    await reference.close();
    await single.close();
  });
});
