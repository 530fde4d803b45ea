/**
 * The paged expert store: every expert of the golden Mixtral checkpoint quantised to int8 or int4
 * per column, one file per expert, paged back with one read and checked (size, header, checksum).
 */
import { cp, mkdir, mkdtemp, readFile, rename, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Checkpoint } from '../../formats/checkpoint.ts';
import { highNibble16, lowNibble16 } from './expert-kernel.ts';
import {
  allocateExpert,
  buildExpertStore,
  EXPERT_FORMAT_VERSION,
  ExpertStore,
  type ExpertStoreIndex,
  expertFileBytes,
  type Int4ExpertWeights,
  quantizeExpert,
  writeExpertStore,
} from './expert-store.ts';

/** The packed int4 rows as the int8 values 16·q the expert kernel multiplies ([rows, 2·rowBytes]). */
function widen(packed: Uint8Array, rows: number, rowBytes: number): Int8Array {
  const out = new Int8Array(2 * rows * rowBytes);
  for (let k = 0; k < rows; k++) {
    for (let c = 0; c < rowBytes; c++) {
      out[2 * k * rowBytes + c] = lowNibble16(packed[k * rowBytes + c]!);
      out[2 * k * rowBytes + rowBytes + c] = highNibble16(packed[k * rowBytes + c]!);
    }
  }
  return out;
}

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
    expect(index).toMatchObject({ dim: 64, ffn: 160, layers: 2, experts: 8, topK: 2, quantization: 'int8-per-column' });
    expect(index.fileBytes).toBe(expertFileBytes(64, 160, 8));
  });

  it('pages an expert back whose int8 × scale reproduces the fp32 weights to half a quantisation step', async () => {
    const store = await ExpertStore.open(join(work, 'native'));
    expect(store.bits).toBe(8);
    const weights = await store.read(1, 5, store.allocate());
    if (weights.bits !== 8) throw new Error('expected int8 weights');
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
        `{"formatVersion": ${EXPERT_FORMAT_VERSION}, "quantization": "int8-per-column", "dim": 0}`,
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

/** w ([out, in] rows) as the graph sees it: unpacked column n of `unpacked` ([in, total]) × its scale. */
function dequantizedColumn(unpacked: Int8Array, scales: Float32Array, total: number, column: number, inner: number): Float64Array {
  return Float64Array.from({ length: inner }, (_, k) => unpacked[k * total + column]! * scales[column]!);
}

/** Round-to-nearest int4 of one row at the plain absmax step max|w|/7: the baseline the clip search must not lose to. */
function absmaxSquaredError(row: Float32Array): number {
  const step = row.reduce((max, v) => Math.max(max, Math.abs(v)), 0) / 7;
  return row.reduce((sum, v) => sum + (step === 0 ? v * v : (Math.max(-7, Math.min(7, Math.round(v / step))) * step - v) ** 2), 0);
}

describe('int4 expert store', () => {
  let dir: string;
  let int4: ExpertStoreIndex;
  beforeAll(async () => {
    dir = join(work, 'int4');
    int4 = await buildExpertStore(checkpoint, dir, 4);
  });

  it('writes experts-int4/ with quantization int4-per-column and files about half the int8 size', async () => {
    expect(int4).toMatchObject({ dim: 64, ffn: 160, layers: 2, experts: 8, topK: 2, quantization: 'int4-per-column' });
    const bytes = expertFileBytes(64, 160, 4);
    expect(int4.fileBytes).toBe(bytes);
    expect((await stat(join(dir, 'experts-int4', 'L1-E7.bin'))).size).toBe(bytes);
    // 64-byte header + fp32 scales (2·ffn + dim) + half a byte per weight (3·dim·ffn).
    expect(bytes).toBe(64 + 4 * (2 * 160 + 64) + (3 * 64 * 160) / 2);
    const int8 = expertFileBytes(64, 160, 8);
    expect(bytes - 64 - 4 * (2 * 160 + 64)).toBe((int8 - 64 - 4 * (2 * 160 + 64)) / 2);
    expect(bytes / int8).toBeGreaterThan(0.5);
    expect(bytes / int8).toBeLessThan(0.55);
  });

  it('opens as a 4-bit store and pages experts back as packed nibbles with their scales', async () => {
    const store = await ExpertStore.open(dir);
    expect(store.bits).toBe(4);
    expect(store.index.quantization).toBe('int4-per-column');
    expect(store.expertBytes).toBe(expertFileBytes(64, 160, 4));
    const weights = await store.read(0, 3, store.allocate());
    expect(weights.bits).toBe(4);
    const { p13, p2, s13, s2 } = weights as Int4ExpertWeights;
    expect([p13.length, p2.length, s13.length, s2.length]).toEqual([64 * 160, (160 * 64) / 2, 2 * 160, 64]);
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

  it('dequantises (16·q × scale/16) every expert back to the fp32 weights: q in [-7, 7], no column worse than absmax rounding', async () => {
    const store = await ExpertStore.open(dir);
    const { dim, ffn, layers, experts } = int4;
    let squaredError = 0;
    let squaredWeight = 0;
    const worseThanAbsmax: string[] = [];
    for (let layer = 0; layer < layers; layer++) {
      for (let expert = 0; expert < experts; expert++) {
        const weights = (await store.read(layer, expert, store.allocate())) as Int4ExpertWeights;
        const w13 = widen(weights.p13, dim, ffn);
        const w2 = widen(weights.p2, ffn, dim / 2);
        // Widened values are 16·q with q ∈ [-7, 7]: never the nibble -8.
        const offGrid = [...w13, ...w2].filter((value) => value % 16 !== 0 || Math.abs(value) > 112);
        expect(offGrid, `L${layer} E${expert}`).toEqual([]);
        const prefix = `layers.${layer}.feed_forward.experts.${expert}`;
        const matrices = [
          {
            w: await checkpoint.read(`${prefix}.w1.weight`),
            out: ffn,
            inner: dim,
            unpacked: w13,
            scales: weights.s13,
            total: 2 * ffn,
            offset: 0,
          },
          {
            w: await checkpoint.read(`${prefix}.w3.weight`),
            out: ffn,
            inner: dim,
            unpacked: w13,
            scales: weights.s13,
            total: 2 * ffn,
            offset: ffn,
          },
          {
            w: await checkpoint.read(`${prefix}.w2.weight`),
            out: dim,
            inner: ffn,
            unpacked: w2,
            scales: weights.s2,
            total: dim,
            offset: 0,
          },
        ];
        for (const { w, out, inner, unpacked, scales, total, offset } of matrices) {
          for (let n = 0; n < out; n++) {
            const row = w.subarray(n * inner, (n + 1) * inner);
            const back = dequantizedColumn(unpacked, scales, total, offset + n, inner);
            const columnError = row.reduce((sum, v, k) => sum + (back[k]! - v) ** 2, 0);
            // The scale search tries ratio 1 (absmax) and keeps the least-squares scale of the best
            // candidate, so no column can be worse than plain absmax rounding (fp32 scale slack aside).
            if (columnError > absmaxSquaredError(row) * (1 + 1e-5) + 1e-12)
              worseThanAbsmax.push(`L${layer} E${expert} column ${offset + n}`);
            squaredError += columnError;
            squaredWeight += row.reduce((sum, v) => sum + v * v, 0);
          }
        }
      }
    }
    expect(worseThanAbsmax).toEqual([]);
    // Relative RMS error over all experts: measured 0.101 (int8: 0.006). Uniform rounding noise at
    // the absmax step (≈ 2.5–3σ / 7 for these Gaussian-like rows) would give Δ/√12 ≈ 0.10–0.12σ;
    // 0.12 allows that and still fails if packing, nibble order or scales go wrong (errors ≥ 0.5).
    const relativeRms = Math.sqrt(squaredError / squaredWeight);
    expect(relativeRms).toBeGreaterThan(0.01); // it is 4-bit: an int8-level error would mean the test reads the wrong thing
    expect(relativeRms).toBeLessThan(0.12);
  });

  it('puts w1 row n in the low and w3 row n in the high nibble of packed column n; w2 rows split at dim/2', () => {
    const dim = 4;
    const ffn = 2;
    // Every row is q × a power-of-two unit with some |q| = 7: absmax rounding is exact, so q and the scale (unit/16) are known.
    const w1 = Float32Array.from([7, -7, 1, 0, /* row 1 */ 3, 2, -7, 1].map((q, i) => q * (i < 4 ? 0.5 : 0.25)));
    const w3 = Float32Array.from([-3, 7, 0, 0, /* row 1 */ 1, 1, 7, -2].map((q) => q * 2));
    const q2 = [7, 1, /* row 1 */ -7, 0, /* row 2 */ 2, 7, /* row 3 */ 0, -7]; // w2 is [dim, ffn]
    const w2 = Float32Array.from(q2, (q) => q * 0.125);
    const { weights } = quantizeExpert({ w1, w3, w2 }, dim, ffn, 4);
    if (weights.bits !== 4) throw new Error('expected int4 weights');
    const nibble = (v: number) => v & 0x0f;
    // p13 is [dim, ffn]: byte (k, n) = w1[n][k] | w3[n][k] << 4.
    for (let k = 0; k < dim; k++) {
      for (let n = 0; n < ffn; n++) {
        const q1 = Math.round(w1[n * dim + k]! / (n === 0 ? 0.5 : 0.25));
        const q3 = Math.round(w3[n * dim + k]! / 2);
        expect(weights.p13[k * ffn + n], `p13 k ${k} n ${n}`).toBe(nibble(q1) | (nibble(q3) << 4));
      }
    }
    expect(Array.from(weights.s13)).toEqual([0.5 / 16, 0.25 / 16, 2 / 16, 2 / 16]);
    // p2 is [ffn, dim/2]: byte (k, c) = w2[c][k] | w2[c + dim/2][k] << 4.
    for (let k = 0; k < ffn; k++) {
      for (let c = 0; c < dim / 2; c++) {
        expect(weights.p2[k * (dim / 2) + c], `p2 k ${k} c ${c}`).toBe(
          nibble(q2[c * ffn + k]!) | (nibble(q2[(c + dim / 2) * ffn + k]!) << 4),
        );
      }
    }
    expect(Array.from(weights.s2)).toEqual([0.125 / 16, 0.125 / 16, 0.125 / 16, 0.125 / 16]);
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
    // An int8 file dropped into experts-int4/ is refused on its size before anything else.
    await cp(join(work, 'native', 'experts-int8', 'L1-E3.bin'), store.path(1, 3));
    await expect(store.read(1, 3, store.allocate())).rejects.toThrow(/L1-E3\.bin is \d+ bytes, expected \d+/);
  });

  it('refuses an odd model width: int4 packs two columns of a row per byte', async () => {
    expect(() => allocateExpert(63, 160, 4)).toThrow(/int4 paged experts need an even model width, not 63/);
    const odd = new Float32Array(63 * 160);
    expect(() => quantizeExpert({ w1: odd, w3: odd, w2: odd }, 63, 160, 4)).toThrow(/even model width/);
    expect(() => allocateExpert(63, 160, 8)).not.toThrow();
    const oddStore = join(work, 'int4-odd');
    await cp(join(dir, 'experts-int4'), join(oddStore, 'experts-int4'), { recursive: true });
    await writeFile(
      join(oddStore, 'experts-int4', 'index.json'),
      JSON.stringify({ ...int4, dim: 63, fileBytes: expertFileBytes(63, 160, 4) }),
    );
    await expect(ExpertStore.open(oddStore)).rejects.toThrow(/index\.json: int4 experts need an even "dim", not 63/);
  });
});
