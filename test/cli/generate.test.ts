import { execFile, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const repoRoot = join(import.meta.dirname, '..', '..');
let home: string;

beforeAll(async () => {
  home = await mkdtemp(join(tmpdir(), 'sirocco-cli-generate-'));
});
afterAll(() => rm(home, { recursive: true, force: true }));

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `node bin/sirocco.mjs generate …` as a user would, with its own SIROCCO_HOME. */
function sirocco(...args: string[]): Promise<Result> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['bin/sirocco.mjs', 'generate', ...args],
      { cwd: repoRoot, env: { ...process.env, SIROCCO_HOME: home }, timeout: 120_000 },
      (error, stdout, stderr) => resolve({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr }),
    );
  });
}

describe('sirocco generate', () => {
  it('builds the demo model on first use, even from two processes at once, and streams the same text for the same seed', async () => {
    const args = ['--prompt', 'Tell me a story about the sea.', '--max-tokens', '8', '--seed', '1234'];
    const [a, b] = await Promise.all([sirocco(...args), sirocco(...args)]);
    expect(a.code, a.stderr).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    expect(a.stdout.trim().length).toBeGreaterThan(0);
    expect(b.stdout).toBe(a.stdout);
    expect(a.stderr).toMatch(/demo model mistral-tiny \(random weights, nonsense output\)/);
    expect(a.stderr).toMatch(/\[\d+ prompt tokens, 8 completion tokens, finish: length, [\d.]+ tokens\/s\]/);

    const otherSeed = await sirocco('--prompt', 'Tell me a story about the sea.', '--max-tokens', '8', '--seed', '4321');
    expect(otherSeed.code).toBe(0);
    expect(otherSeed.stdout).not.toBe(a.stdout);
  });

  it('is greedy at temperature 0, and --raw skips the chat template', async () => {
    const chat = await sirocco('--prompt', 'Hello', '--max-tokens', '6', '--temperature', '0');
    expect(chat.code, chat.stderr).toBe(0);
    expect((await sirocco('--prompt', 'Hello', '--max-tokens', '6', '--temperature', '0')).stdout).toBe(chat.stdout);
    const raw = await sirocco('--prompt', 'Hello', '--max-tokens', '6', '--temperature', '0', '--raw');
    expect(raw.code).toBe(0);
    expect(raw.stderr).toMatch(/\[2 prompt tokens/); // <s> ▁Hello, no [INST] wrapper
    expect(chat.stderr).not.toMatch(/\[2 prompt tokens/);
  });

  it('runs the Mixtral demo with --model demo-small', async () => {
    const result = await sirocco('--model', 'demo-small', '--prompt', 'Hi', '--max-tokens', '4', '--temperature', '0');
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toMatch(/demo model mistral-small/);
    expect(result.stderr).toMatch(/4 completion tokens/);
  });

  it('stops at Ctrl-C with exit code 130, keeping the text already streamed', async () => {
    const child = spawn(
      process.execPath,
      ['bin/sirocco.mjs', 'generate', '--prompt', 'Go on forever.', '--max-tokens', '8000', '--temperature', '0'],
      {
        cwd: repoRoot,
        env: { ...process.env, SIROCCO_HOME: home },
      },
    );
    let stdout = '';
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.stdout.on('data', (chunk: Buffer) => {
      if (stdout === '') child.kill('SIGINT');
      stdout += chunk.toString();
    });
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(code).toBe(130);
    expect(stdout.length).toBeGreaterThan(0);
    expect(stderr).toMatch(/sirocco generate: interrupted/);
    expect(stderr).not.toMatch(/completion tokens/);
  });

  it.each([
    [['--max-tokens', '0', '--prompt', 'x'], /--max-tokens must be an integer ≥ 1, got 0$/m],
    [['--temperature', '-1', '--prompt', 'x'], /--temperature must be a number from 0 to 1\.5, got -1$/m],
    [['--temperature', 'hot', '--prompt', 'x'], /--temperature must be a number/],
    [['--top-p', '1.5', '--prompt', 'x'], /--top-p must be a number > 0 and ≤ 1, got 1\.5/],
    [['--seed=-1', '--prompt', 'x'], /--seed must be an integer/],
    [['--seed', '1.5', '--prompt', 'x'], /--seed must be an integer/],
    [['--precision', 'int3', '--prompt', 'x'], /--precision must be one of fp32, int8, int4, got "int3"/],
    [['--device', 'tpu', '--prompt', 'x'], /--device must be one of cpu, cuda, got "tpu"/],
    [['--prompt', 'x', '--frobnicate'], /unknown option --frobnicate$/m],
    [['--prompt', 'x', '--tempature', '0'], /unknown option --tempature; did you mean --temperature\?/],
    [[], /missing required option --prompt/],
  ])('rejects %j with a clear message and exit code 2', async (args, message) => {
    const result = await sirocco(...args);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(message);
    expect(result.stderr).not.toMatch(/\n\s+at /); // no stack trace
    expect(result.stdout).toBe('');
  });

  it('names the folder when --model is not a model', async () => {
    const result = await sirocco('--model', join(home, 'no-such-model'), '--prompt', 'x');
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('no-such-model');
    expect(result.stderr).not.toMatch(/\n\s+at /);
  });

  it('prints its options with --help', async () => {
    const result = await sirocco('--help');
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/demo-small/);
    expect(result.stdout).toMatch(/nonsense/);
    expect(result.stdout).toMatch(/--max-tokens N .*\(default 128/);
    expect(result.stdout).toMatch(/examples:\n {2}sirocco generate/);
    expect(result.stdout).not.toMatch(/Infinity/);
  });
});
