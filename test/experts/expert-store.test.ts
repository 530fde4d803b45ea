/**
 * The paged expert store: every expert of the golden Mixtral checkpoint quantised to int8 per
 * column, one file per expert, paged back with one read and checked (size, header, checksum).
 */
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Checkpoint } from '../../sidecar/checkpoint.ts';
import { ExpertStore, allocateExpert, buildExpertStore, expertFileBytes, writeExpertStore, type ExpertStoreIndex } from '../../sidecar/expert-store.ts';

const GOLDEN = join(import.meta.dirname, '../fixtures/golden/tiny-mixtral');

let work: string;
let checkpoint: Checkpoint;
let index: ExpertStoreIndex;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'sirocco-expert-store-'));
  checkpoint = await Checkpoint.open(join(GOLDEN, 'native'));
  index = await buildExpertStore(checkpoint, join(work, 'native'));
});

afterAll(async () => {
  await checkpoint?.close();
  await rm(work, { recursive: true, force: true });
});

describe('expert store', () => {
  it('records the checkpoint shape: 2 layers × 8 experts, top-2, one fixed-size file each', () => {
    expect(index).toMatchObject({ dim: 64, ffn: 160, layers: 2, experts: 8, topK: 2, quantization: 'int8-per-column' });
    expect(index.fileBytes).toBe(expertFileBytes(64, 160));
  });

  it('pages an expert back whose int8 × scale reproduces the fp32 weights to half a quantisation step', async () => {
    const store = await ExpertStore.open(join(work, 'native'));
    const weights = await store.read(1, 5, store.allocate());
    const w1 = await checkpoint.read('layers.1.feed_forward.experts.5.w1.weight'); // [ffn, dim]
    const w2 = await checkpoint.read('layers.1.feed_forward.experts.5.w2.weight'); // [dim, ffn]
    const { dim, ffn } = index;
    for (let n = 0; n < ffn; n += 7) {
      for (let k = 0; k < dim; k++) {
        const back = weights.w13[k * 2 * ffn + n]! * weights.s13[n]!;
        expect(Math.abs(back - w1[n * dim + k]!)).toBeLessThanOrEqual(weights.s13[n]! / 2 + 1e-7);
      }
    }
    for (let n = 0; n < dim; n += 5) {
      for (let k = 0; k < ffn; k++) {
        const back = weights.w2[k * dim + n]! * weights.s2[n]!;
        expect(Math.abs(back - w2[n * ffn + k]!)).toBeLessThanOrEqual(weights.s2[n]! / 2 + 1e-7);
      }
    }
  });

  it('writes byte-identical stores from the native and Hugging Face layouts of the same weights', async () => {
    const hf = await Checkpoint.open(join(GOLDEN, 'hf'));
    try {
      await buildExpertStore(hf, join(work, 'hf'));
    } finally {
      await hf.close();
    }
    for (const name of ['L0-E0.bin', 'L1-E7.bin']) {
      const a = await readFile(join(work, 'native', 'experts-int8', name));
      const b = await readFile(join(work, 'hf', 'experts-int8', name));
      expect(a.equals(b)).toBe(true);
    }
  });

  it('pages in without holding the event loop: the read and the checksum yield while they run', async () => {
    // Two 8.5 MB experts, so the one-time checksum spans several 4 MiB slices.
    const dir = join(work, 'large');
    const dim = 512;
    const ffn = 4096;
    const routers = { norm: [new Float32Array(dim).fill(1)], gate: [new Float32Array(2 * dim)] };
    await writeExpertStore(dir, { dim, ffn, layers: 1, experts: 2, topK: 2, normEps: 1e-5 }, routers, () => {
      const image = allocateExpert(dim, ffn);
      image.weights.w13.fill(3);
      return image.bytes;
    });
    const store = await ExpertStore.open(dir);
    let turns = 0;
    let done = false;
    const spin = () => setImmediate(() => (done ? undefined : (turns++, spin())));
    spin();
    await store.read(0, 1, store.allocate());
    done = true;
    expect(turns).toBeGreaterThanOrEqual(3); // open/stat/read callbacks and the checksum slices each let other work in
  });

  describe('bad files fail with a message naming the file', () => {
    let dir: string;
    let store: ExpertStore;
    beforeAll(async () => {
      dir = join(work, 'damaged');
      await buildExpertStore(checkpoint, dir);
      store = await ExpertStore.open(dir);
    });

    it('missing', async () => {
      await rm(store.path(0, 1));
      await expect(store.read(0, 1, store.allocate())).rejects.toThrow(/cannot read expert file .*L0-E1\.bin: ENOENT/);
    });

    it('truncated', async () => {
      await truncate(store.path(0, 2), 1000);
      await expect(store.read(0, 2, store.allocate())).rejects.toThrow(/expert file .*L0-E2\.bin is 1000 bytes, expected \d+/);
    });

    it('flipped payload byte (checksum)', async () => {
      const bytes = await readFile(store.path(0, 3));
      bytes[bytes.length - 10] ^= 0x55;
      await writeFile(store.path(0, 3), bytes);
      await expect(store.read(0, 3, store.allocate())).rejects.toMatchObject({
        type: 'model_error',
        message: expect.stringMatching(/expert file .*L0-E3\.bin is corrupt: checksum mismatch/),
      });
    });

    it('a file copied from another expert (header names the wrong slot)', async () => {
      await writeFile(store.path(0, 4), await readFile(store.path(1, 4)));
      await expect(store.read(0, 4, store.allocate())).rejects.toThrow(/L0-E4\.bin is corrupt: header says layer 1 expert 4/);
    });

    it('a store without paged experts (dense, or converted before paging existed)', async () => {
      await expect(ExpertStore.open(work)).rejects.toThrow(/has no paged expert files \(experts-int8\/index\.json\).*convert the checkpoint again/);
    });

    it('a broken index', async () => {
      await writeFile(join(dir, 'experts-int8', 'index.json'), '{"formatVersion": 1, "quantization": "int8-per-column", "dim": 0}');
      await expect(ExpertStore.open(dir)).rejects.toThrow(/index\.json: field "dim" must be a positive integer/);
    });
  });
});
