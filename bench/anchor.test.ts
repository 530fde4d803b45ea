/** Reading llama.cpp's figures for the benches: present, absent, and broken files that must not stop a bench. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ANCHOR_DIR_ENV, anchorReport, formatAnchorCell, readAnchor } from './anchor.ts';

let dir: string;
let errors: string[];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'anchor-'));
  errors = [];
  vi.spyOn(console, 'error').mockImplementation((line: unknown) => void errors.push(String(line)));
});

afterEach(() => {
  vi.restoreAllMocks();
  rmSync(dir, { recursive: true, force: true });
});

const env = () => ({ [ANCHOR_DIR_ENV]: dir });

describe('readAnchor', () => {
  it('reads a valid file into the benches’ names', () => {
    writeFileSync(
      join(dir, 'anchor-dense.json'),
      '{"shape":"dense","file_gib":0.53,"pp_tok_s":109.4,"tg_tok_s":36.2,"pp_stddev":1.1,"tg_stddev":0.3}\n',
    );
    writeFileSync(join(dir, 'anchor-moe.json'), '{"shape":"moe","file_gib":0.42,"pp_tok_s":400,"tg_tok_s":150}');
    expect(readAnchor('dense', env())).toEqual({
      shape: 'dense',
      source: join(dir, 'anchor-dense.json'),
      fileGiB: 0.53,
      prefillTokensPerSecond: 109.4,
      decodeTokensPerSecond: 36.2,
      prefillStddev: 1.1,
      decodeStddev: 0.3,
    });
    expect(readAnchor('moe', env())).toMatchObject({ decodeTokensPerSecond: 150, prefillStddev: null, decodeStddev: null });
    expect(errors).toEqual([]);
  });

  it('is null and silent without the environment variable', () => {
    expect(readAnchor('dense', {})).toBeNull();
    expect(readAnchor('dense', { [ANCHOR_DIR_ENV]: '' })).toBeNull();
    expect(errors).toEqual([]);
  });

  it('is null after one line naming the file when the file is missing, malformed or for another shape', () => {
    const file = join(dir, 'anchor-dense.json');
    expect(readAnchor('dense', env())).toBeNull();
    writeFileSync(file, '{"shape":"dense",');
    expect(readAnchor('dense', env())).toBeNull();
    writeFileSync(file, '{"shape":"dense","file_gib":0.5,"pp_tok_s":"fast","tg_tok_s":36}');
    expect(readAnchor('dense', env())).toBeNull();
    writeFileSync(file, '{"shape":"moe","file_gib":0.5,"pp_tok_s":100,"tg_tok_s":36}');
    expect(readAnchor('dense', env())).toBeNull();
    expect(errors).toHaveLength(4);
    for (const line of errors) {
      expect(line).toContain(file);
      expect(line).not.toContain('\n');
    }
    expect(errors[0]).toContain('no such file');
    expect(errors[1]).toContain('not valid JSON');
    expect(errors[2]).toContain('pp_tok_s');
    expect(errors[3]).toContain('"moe"');
  });
});

describe('comparison', () => {
  it('formats ours / llama.cpp = ratio× and reports the same ratio', () => {
    expect(formatAnchorCell(18.1, 36.2)).toBe('18.1 / 36.2 = 0.50×');
    const report = anchorReport(
      {
        shape: 'dense',
        source: 'x',
        fileGiB: 0.5,
        prefillTokensPerSecond: 100,
        decodeTokensPerSecond: 40,
        prefillStddev: null,
        decodeStddev: null,
      },
      { decode: 20, prefill: null },
    );
    expect(report.decode).toEqual({ ours: 20, llamaCpp: 40, ratio: 0.5 });
    expect(report.prefill).toBeNull();
  });
});
