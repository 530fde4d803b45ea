import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SidecarError } from '../errors.ts';
import { SafetensorsFile, writeSafetensors } from './safetensors.ts';

const GOLDEN = new URL('../../test/fixtures/golden/', import.meta.url).pathname;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'sirocco-safetensors-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Writes a file from a hand-made header and data block, for the corrupt-input cases. */
async function writeRaw(name: string, header: unknown, data: Uint8Array, lengthOverride?: bigint): Promise<string> {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(lengthOverride ?? BigInt(json.length));
  const path = join(dir, name);
  await writeFile(path, Buffer.concat([prefix, json, data]));
  return path;
}

async function expectModelError(promise: Promise<unknown>, ...fragments: string[]) {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(SidecarError);
  expect((error as SidecarError).type).toBe('model_error');
  for (const fragment of fragments) expect((error as Error).message).toContain(fragment);
}

describe('writeSafetensors + SafetensorsFile round trip', () => {
  const values = Float32Array.from([0, 1, -2.5, 3.140625, 65504, 1e-7, -0.0001, 123.456]);

  it('stores F32 exactly and reports names, shapes, dtypes and metadata', async () => {
    const path = join(dir, 'f32.safetensors');
    await writeSafetensors(path, [{ name: 'a', dtype: 'F32', shape: [2, 4], data: values }], { format: 'pt' });
    const file = await SafetensorsFile.open(path);
    expect(file.tensors.get('a')).toMatchObject({ name: 'a', dtype: 'F32', shape: [2, 4], byteLength: 32, file: path });
    expect(file.metadata).toEqual({ format: 'pt' });
    expect(Array.from(await file.readFloat32('a'))).toEqual(Array.from(values));
    await file.close();
  });

  it('rounds to BF16 and F16 within their precision and decodes back to float32', async () => {
    const path = join(dir, 'half.safetensors');
    await writeSafetensors(path, [
      { name: 'bf', dtype: 'BF16', shape: [8], data: values },
      { name: 'h', dtype: 'F16', shape: [8], data: values },
    ]);
    const file = await SafetensorsFile.open(path);
    const bf = await file.readFloat32('bf');
    const h = await file.readFloat32('h');
    expect([bf.length, h.length]).toEqual([values.length, values.length]);
    for (const [i, value] of values.entries()) {
      expect(Math.abs(bf[i]! - value)).toBeLessThanOrEqual(Math.abs(value) * 2 ** -8);
      // F16: relative 2^-11 for normals, absolute 2^-25 in the subnormal range.
      expect(Math.abs(h[i]! - value)).toBeLessThanOrEqual(Math.max(Math.abs(value) * 2 ** -11, 2 ** -25));
    }
    expect(h[4]).toBe(65504); // largest half is exact
    await file.close();
  });

  it('aligns the data block to 8 bytes', async () => {
    const path = join(dir, 'align.safetensors');
    await writeSafetensors(path, [{ name: 'x', dtype: 'F32', shape: [1], data: Float32Array.of(1) }]);
    const bytes = await readFile(path);
    expect((8 + Number(bytes.readBigUInt64LE(0))) % 8).toBe(0);
  });

  it('refuses data that does not match the shape', async () => {
    await expectModelError(
      writeSafetensors(join(dir, 'bad.safetensors'), [{ name: 'x', dtype: 'F32', shape: [3], data: new Float32Array(2) }]),
      '"x"',
    );
  });
});

describe('reading the golden checkpoints', () => {
  it('decodes the BF16 Hugging Face file to the same numbers as the F32 native file', async () => {
    const native = await SafetensorsFile.open(join(GOLDEN, 'tiny-mistral/native/consolidated.safetensors'));
    const hf = await SafetensorsFile.open(join(GOLDEN, 'tiny-mistral/hf/model.safetensors'));
    expect(hf.tensors.get('model.embed_tokens.weight')).toMatchObject({ dtype: 'BF16', shape: [512, 64] });
    expect(await hf.readFloat32('model.embed_tokens.weight')).toEqual(await native.readFloat32('tok_embeddings.weight'));
    expect(await hf.readFloat32('model.layers.1.mlp.down_proj.weight')).toEqual(
      await native.readFloat32('layers.1.feed_forward.w2.weight'),
    );
    await native.close();
    await hf.close();
  });
});

describe('bad files fail with a model_error naming the file and tensor', () => {
  it('missing file', async () => {
    await expectModelError(SafetensorsFile.open(join(dir, 'nope.safetensors')), 'nope.safetensors', 'ENOENT');
  });

  it('file shorter than the length prefix', async () => {
    const path = join(dir, 'tiny.safetensors');
    await writeFile(path, Buffer.from([1, 2, 3]));
    await expectModelError(SafetensorsFile.open(path), 'tiny.safetensors', 'too short');
  });

  it('header length beyond the end of the file', async () => {
    const path = await writeRaw('biglen.safetensors', {}, new Uint8Array(0), 1n << 40n);
    await expectModelError(SafetensorsFile.open(path), 'biglen.safetensors', 'truncated');
  });

  it('header that is not JSON', async () => {
    const path = await writeRaw('json.safetensors', '{"a": {"dtype": "F32", ', new Uint8Array(0));
    await expectModelError(SafetensorsFile.open(path), 'json.safetensors', 'not valid JSON');
  });

  it('tensor data past the end of the file (truncated download)', async () => {
    const full = join(dir, 'full.safetensors');
    await writeSafetensors(full, [
      { name: 'first', dtype: 'F32', shape: [4], data: new Float32Array(4) },
      { name: 'second', dtype: 'F32', shape: [64], data: new Float32Array(64) },
    ]);
    const bytes = await readFile(full);
    const cut = join(dir, 'cut.safetensors');
    await writeFile(cut, bytes.subarray(0, bytes.length - 10));
    await expectModelError(SafetensorsFile.open(cut), 'cut.safetensors', '"second"', 'truncated');
  });

  it('unsupported dtype in the header', async () => {
    const path = await writeRaw('f64.safetensors', { w: { dtype: 'F64', shape: [1], data_offsets: [0, 8] } }, new Uint8Array(8));
    await expectModelError(SafetensorsFile.open(path), 'f64.safetensors', '"w"', 'F64');
  });

  it('integer tensor read as floats', async () => {
    const path = await writeRaw('i8.safetensors', { q: { dtype: 'I8', shape: [4], data_offsets: [0, 4] } }, new Uint8Array(4));
    const file = await SafetensorsFile.open(path);
    expect(file.tensors.get('q')?.dtype).toBe('I8');
    await expectModelError(file.readFloat32('q'), 'i8.safetensors', '"q"', 'I8');
    await file.close();
  });

  it('byte range that disagrees with dtype and shape', async () => {
    const path = await writeRaw('shape.safetensors', { w: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 12] } }, new Uint8Array(16));
    await expectModelError(SafetensorsFile.open(path), 'shape.safetensors', '"w"', 'need 16');
  });

  it('negative or reversed offsets', async () => {
    const path = await writeRaw('offsets.safetensors', { w: { dtype: 'F32', shape: [1], data_offsets: [8, 4] } }, new Uint8Array(16));
    await expectModelError(SafetensorsFile.open(path), 'offsets.safetensors', '"w"', 'data_offsets');
  });

  it('unknown tensor name', async () => {
    const file = await SafetensorsFile.open(join(GOLDEN, 'tiny-mistral/native/consolidated.safetensors'));
    await expectModelError(file.readFloat32('does.not.exist'), '"does.not.exist"', 'consolidated.safetensors');
    await file.close();
  });
});
