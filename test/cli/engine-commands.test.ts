/**
 * `sirocco convert` and `sirocco logits` as a user runs them (real processes via bin/sirocco.mjs):
 * convert writes a complete store with its manifest; logits prints exactly one JSON object with a
 * full-vocabulary row per input position, for a raw checkpoint or a store; mistakes exit non-zero
 * with a message naming what is wrong.
 */

import { cpSync, existsSync, readdirSync, readFileSync, rmSync, statSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FORMAT_VERSION, type Manifest } from '../../sidecar/formats/store-manifest.ts';
import { runSirocco } from '../support/cli.ts';
import { checkpointDir, loadGolden, relativeError, tempDir } from '../support/golden.ts';

const ROOT = new URL('../..', import.meta.url).pathname;
const work = tempDir('cli');
afterAll(() => rmSync(work, { recursive: true, force: true }));

const sirocco = (...args: string[]) => runSirocco(join(work, 'home'), ...args);

function parseLogits(stdout: string): number[][] {
  const [line, ...rest] = stdout.trim().split('\n');
  expect(rest).toEqual([]);
  const parsed = JSON.parse(line ?? '') as { logits: number[][] };
  expect(Object.keys(parsed)).toEqual(['logits']);
  return parsed.logits;
}

describe('sirocco convert', () => {
  it('converts a native Mixtral checkpoint to an int8 store with a manifest, one block file per expert', async () => {
    const store = join(work, 'mixtral-int8');
    const { code, stdout, stderr } = await sirocco(
      'convert',
      '--from',
      checkpointDir('tiny-mixtral', 'native'),
      '--to',
      store,
      '--precision',
      'int8',
    );
    expect(stderr).toContain('mixtral int8');
    expect(code).toBe(0);
    expect(stdout.trim()).toBe(store);

    const manifest = JSON.parse(readFileSync(join(store, 'manifest.json'), 'utf8')) as Manifest;
    expect(manifest).toMatchObject({ formatVersion: FORMAT_VERSION, precision: 'int8', architecture: 'mixtral', name: 'native' });
    expect(manifest.sourceHash).toMatch(/^[0-9a-f]{24}$/);
    expect(manifest.tensors['layers.1.feed_forward.experts.7.w2.weight']).toEqual([64, 160]);
    // Its experts are Q8_0 block files (experts-int8/), resident or paged: no per-expert graphs.
    expect(manifest.graphs.experts).toBeUndefined();
    for (const file of manifest.files) expect(statSync(join(store, file.path)).size).toBe(file.bytes);
    expect(readdirSync(work).filter((f) => f.includes('.partial-'))).toEqual([]);

    const logits = parseLogits((await sirocco('logits', '--model', store, '--tokens', '1,17,300,42')).stdout);
    expect(logits.map((row) => row.length)).toEqual([512, 512, 512, 512]);
    // An int8 store pages int8 experts by default.
    expect(readdirSync(store)).toContain('experts-int8');
  });

  it('writes int4 paged experts for an int4 Mixtral store, or int8 ones with --expert-bits 8', async () => {
    const int4 = join(work, 'mixtral-int4');
    expect((await sirocco('convert', '--from', checkpointDir('tiny-mixtral', 'native'), '--to', int4)).code).toBe(0);
    expect(readdirSync(int4).filter((f) => f.startsWith('experts-'))).toEqual(['experts-int4']);
    const int4With8 = join(work, 'mixtral-int4-experts8');
    expect(
      (await sirocco('convert', '--from', checkpointDir('tiny-mixtral', 'native'), '--to', int4With8, '--expert-bits', '8')).code,
    ).toBe(0);
    expect(readdirSync(int4With8).filter((f) => f.startsWith('experts-'))).toEqual(['experts-int8']);
  });

  it('fails on a truncated checkpoint, naming file and tensor, and writes no store', async () => {
    const source = join(work, 'truncated');
    cpSync(checkpointDir('tiny-mistral', 'native'), source, { recursive: true });
    const file = join(source, 'consolidated.safetensors');
    truncateSync(file, statSync(file).size - 4096);
    const store = join(work, 'never');
    const { code, stderr } = await sirocco('convert', '--from', source, '--to', store);
    expect(code).toBe(1);
    expect(stderr).toContain('consolidated.safetensors');
    expect(stderr).toContain('"output.weight"');
    expect(existsSync(store)).toBe(false);
  });

  it('explains usage mistakes with exit code 2', async () => {
    expect(await sirocco('convert', '--from', checkpointDir('tiny-mistral', 'hf'))).toMatchObject({
      code: 2,
      stderr: expect.stringContaining('--to'),
    });
    expect(await sirocco('convert', '--from', 'x', '--to', 'y', '--precision', 'int3')).toMatchObject({
      code: 2,
      stderr: expect.stringContaining('int4'),
    });
    expect(await sirocco('convert', '--from', 'x', '--to', 'y', '--expert-bits', '2')).toMatchObject({
      code: 2,
      stderr: expect.stringContaining('--expert-bits must be 4 or 8'),
    });
  });
});

describe('sirocco itself', () => {
  it('prints the package version with --version and -v', async () => {
    const { version } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(await sirocco('--version')).toMatchObject({ code: 0, stdout: `${version}\n` });
    expect(await sirocco('-v')).toMatchObject({ code: 0, stdout: `${version}\n` });
  });

  it.each(['convert', 'logits', 'serve'])('%s --help lists its flags with defaults and examples', async (command) => {
    const { code, stdout } = await sirocco(command, '--help');
    expect(code).toBe(0);
    expect(stdout).toMatch(new RegExp(`^usage: sirocco ${command} `));
    expect(stdout).toMatch(/\(default /);
    expect(stdout).toMatch(new RegExp(`examples:\n {2}sirocco ${command}`));
  });
});

describe('sirocco logits', () => {
  it('prints the golden logits for a Hugging Face checkpoint folder (fp32 by default)', async () => {
    const golden = loadGolden('tiny-mistral').cases[1]!;
    const { code, stdout } = await sirocco('logits', '--model', checkpointDir('tiny-mistral', 'hf'), '--tokens', golden.tokens.join(','));
    expect(code).toBe(0);
    const logits = parseLogits(stdout);
    expect(logits).toHaveLength(golden.tokens.length);
    expect(relativeError(Float32Array.from(logits.flat()), golden.logits)).toBeLessThan(1e-4);
  });

  it('rejects out-of-range tokens, bad token lists, missing models and an unavailable device', async () => {
    const model = checkpointDir('tiny-mistral', 'native');
    const outOfRange = await sirocco('logits', '--model', model, '--tokens', '1,512');
    expect(outOfRange).toMatchObject({ code: 1, stdout: '' });
    expect(outOfRange.stderr).toContain('token id 512 at position 1 is outside the vocabulary [0, 512)');

    expect(await sirocco('logits', '--model', model, '--tokens', '1,,2')).toMatchObject({
      code: 2,
      stderr: expect.stringContaining('--tokens'),
    });
    expect(await sirocco('logits', '--tokens', '1')).toMatchObject({ code: 2, stderr: expect.stringContaining('--model') });
    expect(await sirocco('logits', '--model', join(work, 'missing'), '--tokens', '1')).toMatchObject({
      code: 1,
      stderr: expect.stringContaining('does not exist'),
    });
    expect(await sirocco('logits', '--model', model, '--tokens', '1', '--device', 'cuda')).toMatchObject({
      code: 1,
      stderr: expect.stringContaining('CUDA execution provider'),
    });
  });
});
