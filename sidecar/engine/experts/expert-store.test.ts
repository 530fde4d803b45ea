/**
 * The expert store: every expert of the golden Mixtral checkpoint in Q8_0 or Q4_0 blocks, one
 * file per expert, paged back with one read and checked (size, header, checksum).
 */
import { cp, mkdir, mkdtemp, readFile, rename, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blockMatrixBytes, quantizeBlocks } from '../../formats/blocks.ts';
import { Checkpoint } from '../../formats/checkpoint.ts';
import {
  allocateExpert,
  buildExpertStore,
  EXPERT_FORMAT_VERSION,
  ExpertStore,
  type ExpertStoreIndex,
  type ExpertWeights,
  expertBlocksInRowOrder,
  expertFileBytes,
  quantizeExpert,
  writeExpertStore,
} from './expert-store.ts';

/** The expert's matrices quantised straight from the checkpoint: what its file must hold. */
async function expectedBlocks(checkpoint: Checkpoint, layer: number, expert: number, format: 'q4_0' | 'q8_0', dim: number, ffn: number) {
  const prefix = `layers.${layer}.feed_forward.experts.${expert}`;
  const [w1, w3, w2] = await Promise.all(['w1', 'w3', 'w2'].map((w) => checkpoint.read(`${prefix}.${w}.weight`)));
  const w13 = new Uint8Array(blockMatrixBytes(format, 2 * ffn, dim));
  quantizeBlocks(format, w3!, ffn, dim, w13, quantizeBlocks(format, w1!, ffn, dim, w13));
  const w2Blocks = new Uint8Array(blockMatrixBytes(format, dim, ffn));
  quantizeBlocks(format, w2!, dim, ffn, w2Blocks);
  return { w13, w2: w2Blocks };
}

const same = (a: Uint8Array, b: Uint8Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(b);

const GOLDEN = join(import.meta.dirname, '../../../test/fixtures/golden/tiny-mixtral');

let work: string;
let checkpoint: Checkpoint;
let index: ExpertStoreIndex;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'sirocco-expert-store-'));
  checkpoint = await Checkpoint.open(join(GOLDEN, 'native'));
  index = await buildExpertStore(checkpoint, join(work, 'native'), 8);
});

afterAll(async () => {
  await checkpoint?.close();
  await rm(work, { recursive: true, force: true });
});

describe('expert store', () => {
  it('records the checkpoint shape: 2 layers × 8 experts, top-2, one fixed-size file each', () => {
    expect(index).toMatchObject({ dim: 64, ffn: 160, layers: 2, experts: 8, topK: 2, quantization: 'q8_0' });
    expect(index.fileBytes).toBe(expertFileBytes(64, 160, 8));
    // 64-byte header + 34 bytes per 32 weights (3·dim·ffn weights).
    expect(index.fileBytes).toBe(64 + (3 * 64 * 160 * 34) / 32);
  });

  it('pages an expert back as Q8_0 blocks: w1 rows then w3 rows, then w2, exactly as quantised from the checkpoint', async () => {
    const store = await ExpertStore.open(join(work, 'native'));
    expect(store.bits).toBe(8);
    const weights: ExpertWeights = await store.read(1, 5, store.allocate());
    expect(weights.format).toBe('q8_0');
    const expected = await expectedBlocks(checkpoint, 1, 5, 'q8_0', index.dim, index.ffn);
    expect(same(weights.w13, expected.w13)).toBe(true);
    expect(same(weights.w2, expected.w2)).toBe(true);
  });

  it('writes byte-identical stores from the native and Hugging Face layouts of the same weights', async () => {
    const hf = await Checkpoint.open(join(GOLDEN, 'hf'));
    try {
      await buildExpertStore(hf, join(work, 'hf'), 8);
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
    await writeExpertStore(dir, { dim, ffn, layers: 1, experts: 2, topK: 2, normEps: 1e-5 }, 8, routers, () => {
      const image = allocateExpert(dim, ffn, 8);
      image.weights.w13.fill(3);
      return image.bytes;
    });
    const store = await ExpertStore.open(dir);
    let turns = 0;
    let done = false;
    const spin = (): void => {
      setImmediate(() => {
        if (done) return;
        turns++;
        spin();
      });
    };
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
      await buildExpertStore(checkpoint, dir, 8);
      store = await ExpertStore.open(dir);
    });

    it('missing', async () => {
      await rm(store.path(0, 1));
      await expect(store.read(0, 1, store.allocate())).rejects.toThrow(/expert file .*L0-E1\.bin cannot be read: ENOENT/);
    });

    it('truncated', async () => {
      await truncate(store.path(0, 2), 1000);
      await expect(store.read(0, 2, store.allocate())).rejects.toThrow(/expert file .*L0-E2\.bin is 1000 bytes, expected \d+/);
    });

    it('flipped payload byte (checksum)', async () => {
      const bytes = await readFile(store.path(0, 3));
      bytes[bytes.length - 10]! ^= 0x55; // the file is far longer than 10 bytes
      await writeFile(store.path(0, 3), bytes);
      await expect(store.read(0, 3, store.allocate())).rejects.toMatchObject({
        type: 'model_error',
        message: expect.stringMatching(/expert file .*L0-E3\.bin is corrupt: checksum mismatch/),
        // What an HTTP client sees names the expert, not the server's path.
        publicMessage: 'the file of expert 3 in layer 0 is corrupt: checksum mismatch',
      });
    });

    it('a payload byte flipped after a verified page-in, in place or by replacing the file (its stamp changed: verified again)', async () => {
      for (const [expert, replace] of [
        [0, false],
        [1, true],
      ] as const) {
        const path = store.path(1, expert);
        await store.read(1, expert, store.allocate());
        await store.read(1, expert, store.allocate()); // unchanged: served without the checksum
        const bytes = await readFile(path);
        bytes[bytes.length - 10]! ^= 0x55;
        if (replace) {
          await writeFile(`${path}.new`, bytes);
          await rename(`${path}.new`, path);
        } else await writeFile(path, bytes);
        const corrupt = { type: 'model_error', publicMessage: `the file of expert ${expert} in layer 1 is corrupt: checksum mismatch` };
        await expect(store.read(1, expert, store.allocate())).rejects.toMatchObject(corrupt);
        await expect(store.read(1, expert, store.allocate())).rejects.toMatchObject(corrupt); // not trusted after a failure
        bytes[bytes.length - 10]! ^= 0x55;
        await writeFile(path, bytes);
        await expect(store.read(1, expert, store.allocate())).resolves.toBeDefined();
      }
    });

    it('a file copied from another expert (header names the wrong slot)', async () => {
      await writeFile(store.path(0, 4), await readFile(store.path(1, 4)));
      await expect(store.read(0, 4, store.allocate())).rejects.toThrow(/L0-E4\.bin is corrupt: header says layer 1 expert 4/);
    });

    it('a store without paged experts (dense, or converted before paging existed)', async () => {
      await expect(ExpertStore.open(work)).rejects.toThrow(
        /has no paged expert files \(experts-int4\/ or experts-int8\/index\.json\).*convert the checkpoint again/,
      );
    });

    it('a broken index', async () => {
      await writeFile(
        join(dir, 'experts-int8', 'index.json'),
        `{"formatVersion": ${EXPERT_FORMAT_VERSION}, "quantization": "q8_0", "dim": 0}`,
      );
      await expect(ExpertStore.open(dir)).rejects.toThrow(/index\.json: field "dim" must be a positive integer/);
    });

    it('an index from an older expert format (asks to convert again)', async () => {
      await writeFile(join(dir, 'experts-int8', 'index.json'), JSON.stringify({ ...index, formatVersion: EXPERT_FORMAT_VERSION - 1 }));
      await expect(ExpertStore.open(dir)).rejects.toThrow(
        /index\.json: unsupported format \(formatVersion \d+.*convert the checkpoint again/,
      );
    });
  });
});

describe('int4 expert store', () => {
  let dir: string;
  let int4: ExpertStoreIndex;
  beforeAll(async () => {
    dir = join(work, 'int4');
    int4 = await buildExpertStore(checkpoint, dir, 4);
  });

  it('writes experts-int4/ in Q4_0 blocks: 18 bytes per 32 weights, about half the Q8_0 size', async () => {
    expect(int4).toMatchObject({ dim: 64, ffn: 160, layers: 2, experts: 8, topK: 2, quantization: 'q4_0' });
    const bytes = expertFileBytes(64, 160, 4);
    expect(int4.fileBytes).toBe(bytes);
    expect((await stat(join(dir, 'experts-int4', 'L1-E7.bin'))).size).toBe(bytes);
    expect(bytes).toBe(64 + (3 * 64 * 160 * 18) / 32);
    expect(bytes / expertFileBytes(64, 160, 8)).toBeLessThan(0.55);
  });

  it('pages every expert back exactly as quantised from the checkpoint', async () => {
    const store = await ExpertStore.open(dir);
    expect(store.bits).toBe(4);
    expect(store.index.quantization).toBe('q4_0');
    for (let layer = 0; layer < int4.layers; layer++) {
      for (let expert = 0; expert < int4.experts; expert++) {
        const weights = await store.read(layer, expert, store.allocate());
        const expected = await expectedBlocks(checkpoint, layer, expert, 'q4_0', int4.dim, int4.ffn);
        expect(weights.format).toBe('q4_0');
        const rowOrder = expertBlocksInRowOrder(weights, int4.dim, int4.ffn);
        expect(same(rowOrder.w13, expected.w13) && same(rowOrder.w2, expected.w2), `L${layer} E${expert}`).toBe(true);
      }
    }
  });

  it('prefers experts-int4/ when a store holds both formats', async () => {
    const both = join(work, 'both');
    await mkdir(both);
    await cp(join(dir, 'experts-int4'), join(both, 'experts-int4'), { recursive: true });
    await cp(join(work, 'native', 'experts-int8'), join(both, 'experts-int8'), { recursive: true });
    expect((await ExpertStore.open(both)).bits).toBe(4);
    await rm(join(both, 'experts-int4'), { recursive: true });
    expect((await ExpertStore.open(both)).bits).toBe(8);
  });

  it('quantizeExpert puts w1 rows first, then w3 rows, in w13', () => {
    const dim = 32;
    const ffn = 32;
    const w1 = new Float32Array(ffn * dim).fill(1);
    const w3 = new Float32Array(ffn * dim).fill(-2);
    const w2 = new Float32Array(dim * ffn).fill(0.5);
    const { weights } = quantizeExpert({ w1, w3, w2 }, dim, ffn, 4);
    const { w13 } = expertBlocksInRowOrder(weights, dim, ffn);
    const one = new Uint8Array(18);
    quantizeBlocks('q4_0', w1, 1, dim, one);
    expect(same(w13.subarray(0, 18), one)).toBe(true);
    quantizeBlocks('q4_0', w3, 1, dim, one);
    expect(same(w13.subarray(ffn * 18, ffn * 18 + 18), one)).toBe(true);
    // In the file the rows are interleaved by four: w3's first row starts a group of its own.
    expect(same(weights.w13.subarray(0, 18), one)).toBe(false);
  });

  it('rejects an expert file whose header bit width disagrees with its folder, as corrupt', async () => {
    const damaged = join(work, 'int4-damaged');
    await cp(dir, damaged, { recursive: true });
    const store = await ExpertStore.open(damaged);
    const bytes = await readFile(store.path(1, 2));
    bytes.writeUInt32LE(8, 8 + 4 * 7); // the u32 bits field; the checksum covers only the payload
    await writeFile(store.path(1, 2), bytes);
    await expect(store.read(1, 2, store.allocate())).rejects.toMatchObject({
      type: 'model_error',
      message: expect.stringMatching(/expert file .*experts-int4\/L1-E2\.bin is corrupt: header says .* int8, expected .* int4/),
    });
    // A Q8_0 file dropped into experts-int4/ is refused on its size before anything else.
    await cp(join(work, 'native', 'experts-int8', 'L1-E3.bin'), store.path(1, 3));
    await expect(store.read(1, 3, store.allocate())).rejects.toThrow(/L1-E3\.bin is \d+ bytes, expected \d+/);
  });

  it('refuses shapes that blocks of 32 do not divide', async () => {
    expect(() => allocateExpert(48, 160, 4)).toThrow(/multiples of 32, not 48 and 160/);
    const odd = new Float32Array(48 * 160);
    expect(() => quantizeExpert({ w1: odd, w3: odd, w2: odd }, 48, 160, 8)).toThrow(/multiples of 32/);
    const oddStore = join(work, 'int4-odd');
    await cp(join(dir, 'experts-int4'), join(oddStore, 'experts-int4'), { recursive: true });
    await writeFile(join(oddStore, 'experts-int4', 'index.json'), JSON.stringify({ ...int4, dim: 48 }));
    await expect(ExpertStore.open(oddStore)).rejects.toThrow(/index\.json: "dim" and "ffn" must be multiples of 32/);
  });
});
