/**
 * GGUF files through the CLI as a user runs it: `sirocco logits --model FILE.gguf` prints the
 * file's reference logits (converted once into the store cache), `sirocco convert --from FILE.gguf`
 * writes a store, and a bad file fails naming it, leaving nothing behind.
 */
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../../sidecar/formats/store-manifest.ts';
import { runSirocco } from '../support/cli.ts';
import { relativeError, tempDir } from '../support/golden.ts';

const ROOT = new URL('../..', import.meta.url).pathname;
const GGUF = join(ROOT, 'test/fixtures/golden/gguf');
const work = tempDir('cli-gguf');
afterAll(() => rmSync(work, { recursive: true, force: true }));

const sirocco = (...args: string[]) => runSirocco(join(work, 'home'), ...args);

describe('GGUF files in the CLI', () => {
  it('logits --model FILE.gguf prints the reference logits, as for a checkpoint', async () => {
    const reference = JSON.parse(readFileSync(join(GGUF, 'tiny-mixtral/q8_0.json'), 'utf8')) as {
      cases: Array<{ tokens: number[]; logits: number[][] }>;
    };
    const golden = reference.cases[1]!;
    const { code, stdout } = await sirocco('logits', '--model', join(GGUF, 'tiny-mixtral/q8_0.gguf'), '--tokens', golden.tokens.join(','));
    expect(code).toBe(0);
    const [line, ...rest] = stdout.trim().split('\n');
    expect(rest).toEqual([]);
    const parsed = JSON.parse(line ?? '') as { logits: number[][] };
    expect(Object.keys(parsed)).toEqual(['logits']);
    expect(parsed.logits).toHaveLength(golden.tokens.length);
    expect(relativeError(Float32Array.from(parsed.logits.flat()), golden.logits)).toBeLessThan(1e-4);
    expect(readdirSync(join(work, 'home', 'stores'))).toHaveLength(1);
  });

  it('convert --from FILE.gguf writes a store named after the file', async () => {
    const store = join(work, 'mistral-q4');
    const { code, stdout, stderr } = await sirocco('convert', '--from', join(GGUF, 'tiny-mistral/q4_0.gguf'), '--to', store);
    expect(stderr).toContain('mistral int4');
    expect(code).toBe(0);
    expect(stdout.trim()).toBe(store);
    const manifest = JSON.parse(readFileSync(join(store, 'manifest.json'), 'utf8')) as Manifest;
    expect(manifest).toMatchObject({ name: 'q4_0', precision: 'int4', architecture: 'mistral', config: { slidingWindow: null } });
    expect(readdirSync(store)).toContain('tokenizer.json');
  });

  it('a file that is not GGUF fails naming it, and no store is written', async () => {
    const bad = join(work, 'model.gguf');
    writeFileSync(bad, '<html>404 not found</html>');
    const store = join(work, 'never');
    const { code, stderr } = await sirocco('convert', '--from', bad, '--to', store);
    expect(code).toBe(1);
    expect(stderr).toContain(`${bad} is not a GGUF file`);
    expect(existsSync(store)).toBe(false);
    expect(readdirSync(work).filter((f) => f.includes('.partial-'))).toEqual([]);
  });
});
