/**
 * Broken checkpoints fail conversion with a model_error naming the file and tensor or field, and
 * leave nothing behind: no store at the destination and no temporary folder beside it.
 */

import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { checkpointDir, tempDir } from '../../test/support/golden.ts';
import { convertCheckpoint } from '../convert/convert.ts';
import { SidecarError } from '../errors.ts';
import { loadModel } from './model-runtime.ts';

const work = tempDir('bad-input');
afterAll(() => rmSync(work, { recursive: true, force: true }));

let counter = 0;
/** A fresh copy of a golden checkpoint folder to break. */
function copyOf(model: string, layout: string): string {
  const dir = join(work, `src-${counter++}`);
  cpSync(checkpointDir(model, layout), dir, { recursive: true });
  return dir;
}

/** Rewrites one tensor's header entry in place, keeping the header length (padded with spaces). */
interface HeaderEntry {
  dtype: string;
  shape: number[];
  data_offsets: number[];
}

/** A tensor's entry in a fixture header (the fixture must have it). */
function entryOf(header: Record<string, HeaderEntry>, name: string): HeaderEntry {
  const entry = header[name];
  if (!entry) throw new Error(`the fixture header has no tensor "${name}"`);
  return entry;
}

function editHeader(file: string, edit: (header: Record<string, HeaderEntry>) => void): void {
  const bytes = readFileSync(file);
  const length = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + length).toString('utf8'));
  edit(header);
  const text = JSON.stringify(header);
  if (text.length > length) throw new Error('edited header grew');
  bytes.write(text.padEnd(length, ' '), 8, 'utf8');
  writeFileSync(file, bytes);
}

async function expectFailedConversion(from: string, ...fragments: string[]): Promise<void> {
  const to = join(work, `store-${counter++}`);
  const error = await convertCheckpoint({ from, to, precision: 'int4' }).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(SidecarError);
  expect((error as SidecarError).type).toBe('model_error');
  for (const fragment of fragments) expect((error as Error).message).toContain(fragment);
  expect(existsSync(to)).toBe(false);
  expect(readdirSync(work).filter((name) => name.includes('.partial-'))).toEqual([]);
}

describe('conversion of a broken checkpoint fails cleanly', () => {
  it('missing folder', async () => {
    await expectFailedConversion(join(work, 'nowhere'), 'nowhere', 'does not exist');
  });

  it('folder without a config', async () => {
    const dir = join(work, 'empty');
    mkdirSync(dir);
    await expectFailedConversion(dir, 'params.json', 'config.json');
  });

  it('missing weight file', async () => {
    const dir = copyOf('tiny-mistral', 'native');
    rmSync(join(dir, 'consolidated.safetensors'));
    await expectFailedConversion(dir, 'no weight files', 'consolidated*.safetensors');
  });

  it('missing tensor', async () => {
    const dir = copyOf('tiny-mixtral', 'hf');
    editHeader(join(dir, 'model.safetensors'), (h) => {
      h['model.layers.1.block_sparse_moe.experts.7.wX.weight'] = entryOf(h, 'model.layers.1.block_sparse_moe.experts.7.w3.weight');
      delete h['model.layers.1.block_sparse_moe.experts.7.w3.weight'];
    });
    await expectFailedConversion(dir, '"model.layers.1.block_sparse_moe.experts.7.w3.weight" is missing', 'model.safetensors');
  });

  it('truncated safetensors file', async () => {
    const dir = copyOf('tiny-mistral', 'native');
    const file = join(dir, 'consolidated.safetensors');
    truncateSync(file, statSync(file).size - 1000);
    await expectFailedConversion(dir, 'consolidated.safetensors', '"output.weight"', 'truncated');
  });

  it('corrupt safetensors header', async () => {
    const dir = copyOf('tiny-mistral', 'hf');
    const file = join(dir, 'model.safetensors');
    const bytes = readFileSync(file);
    bytes.write('#', 8); // the header's opening brace
    writeFileSync(file, bytes);
    await expectFailedConversion(dir, 'model.safetensors', 'not valid JSON');
  });

  it('unsupported dtype', async () => {
    const dir = copyOf('tiny-mistral', 'native');
    editHeader(join(dir, 'consolidated.safetensors'), (h) => {
      entryOf(h, 'norm.weight').dtype = 'I32'; // same 4 bytes per element, so only the dtype is wrong
    });
    await expectFailedConversion(dir, 'consolidated.safetensors', '"norm.weight"', 'unsupported dtype I32');
  });

  it('tensor shape disagrees with the config', async () => {
    const dir = copyOf('tiny-mistral', 'native');
    const params = JSON.parse(readFileSync(join(dir, 'params.json'), 'utf8'));
    writeFileSync(join(dir, 'params.json'), JSON.stringify({ ...params, hidden_dim: 128 }));
    await expectFailedConversion(dir, '"layers.0.feed_forward.w1.weight"', 'shape [160, 64]', 'params.json implies [128, 64]');
  });

  it('unknown architecture', async () => {
    const dir = copyOf('tiny-mistral', 'hf');
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...config, model_type: 'gpt2', architectures: ['GPT2LMHeadModel'] }));
    await expectFailedConversion(dir, 'config.json', 'unknown architecture', 'gpt2');
  });

  it('a destination that already holds files is refused and left alone', async () => {
    const to = join(work, 'occupied');
    mkdirSync(to);
    writeFileSync(join(to, 'keep.txt'), 'mine');
    await expect(convertCheckpoint({ from: checkpointDir('tiny-mistral', 'hf'), to, precision: 'fp32' })).rejects.toThrow(/already exists/);
    expect(readdirSync(to)).toEqual(['keep.txt']);
  });
});

describe('a damaged store is refused at load', () => {
  it('names the missing or resized file', async () => {
    const store = join(work, 'damaged');
    await convertCheckpoint({ from: checkpointDir('tiny-mixtral', 'native'), to: store, precision: 'fp32' });
    truncateSync(join(store, 'expert.1.3.bin'), 10);
    await expect(loadModel(store)).rejects.toThrow(/expert\.1\.3\.bin is 10 bytes/);
    rmSync(join(store, 'expert.1.3.bin'));
    await expect(loadModel(store)).rejects.toThrow(/missing expert\.1\.3\.bin/);
    // An int8 store's experts are block files, read whole at load when every expert is resident.
    const int8 = join(work, 'damaged-int8');
    await convertCheckpoint({ from: checkpointDir('tiny-mixtral', 'native'), to: int8, precision: 'int8' });
    truncateSync(join(int8, 'experts-int8', 'L1-E3.bin'), 10);
    await expect(loadModel(int8)).rejects.toThrow(/expert file .*experts-int8\/L1-E3\.bin is 10 bytes, expected \d+/);
  });

  it('refuses a precision the store was not converted to', async () => {
    const store = join(work, 'fp32-store');
    await convertCheckpoint({ from: checkpointDir('tiny-mistral', 'native'), to: store, precision: 'fp32' });
    await expect(loadModel(store, { precision: 'int4' })).rejects.toThrow(/holds fp32 weights, not int4/);
  });
});
