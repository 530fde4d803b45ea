import { describe, expect, it } from 'vitest';
import { CliError, closestName, describeRange, editDistance, parseCommandArgs, parseNumberOption } from './args.ts';

const OPTIONS = {
  temperature: { type: 'string' },
  'max-tokens': { type: 'string' },
  prompt: { type: 'string' },
  raw: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

function parseError(argv: string[]): CliError {
  try {
    parseCommandArgs(argv, OPTIONS);
  } catch (error) {
    if (error instanceof CliError) return error;
    throw error;
  }
  throw new Error(`parsing ${JSON.stringify(argv)} did not fail`);
}

describe('parseCommandArgs', () => {
  it('takes a negative number after a flag with a value as that value', () => {
    expect(parseCommandArgs(['--temperature', '-1'], OPTIONS).values.temperature).toBe('-1');
    expect(parseCommandArgs(['--temperature', '-0.5', '--raw'], OPTIONS).values).toMatchObject({ temperature: '-0.5', raw: true });
    expect(parseCommandArgs(['--max-tokens', '-.5'], OPTIONS).values['max-tokens']).toBe('-.5');
    expect(parseCommandArgs(['--prompt', '-1e3'], OPTIONS).values.prompt).toBe('-1e3');
    expect(parseCommandArgs(['--temperature=-2'], OPTIONS).values.temperature).toBe('-2');
  });

  it('leaves a negative number after a boolean flag alone (a stray argument)', () => {
    expect(parseError(['--raw', '-1']).message).not.toMatch(/ambiguous/);
  });

  it('suggests the nearest flag for a typo', () => {
    expect(parseError(['--tempature', '1']).message).toBe('unknown option --tempature; did you mean --temperature?');
    expect(parseError(['--max-token=3']).message).toBe('unknown option --max-token; did you mean --max-tokens?');
    expect(parseError(['--promt', 'x']).message).toBe('unknown option --promt; did you mean --prompt?');
  });

  it('names an unknown flag without a suggestion when none is close', () => {
    expect(parseError(['--frobnicate']).message).toBe('unknown option --frobnicate');
  });

  it('says which flag lacks its value, and what to do with a stray argument', () => {
    expect(parseError(['--prompt']).message).toBe('--prompt needs a value');
    expect(parseError(['hello']).message).toMatch(/unexpected argument "hello"/);
  });

  it('keeps everything after -- untouched', () => {
    expect(() => parseCommandArgs(['--', '--tempature'], OPTIONS)).toThrow(CliError);
    expect(parseError(['--', '--tempature']).message).not.toMatch(/did you mean/);
  });
});

describe('ranges in words', () => {
  it.each([
    [{ integer: true, min: 1 }, 'an integer ≥ 1'],
    [{ min: 0, max: 1 }, 'a number from 0 to 1'],
    [{ integer: true, min: 0, max: 65535 }, 'an integer from 0 to 65535'],
    [{ above: 0, max: 1 }, 'a number > 0 and ≤ 1'],
    [{ above: 0 }, 'a number > 0'],
    [{ min: Number.MIN_VALUE }, 'a number > 0'],
    [{ max: 10 }, 'a number ≤ 10'],
    [{ integer: true }, 'an integer'],
  ])('describes %j as "%s"', (range, words) => {
    expect(describeRange(range)).toBe(words);
  });

  it('rejects out-of-range values with the range in words, never Infinity', () => {
    expect(() => parseNumberOption('-1', 'temperature', { min: 0, max: 1.5 })).toThrow(
      '--temperature must be a number from 0 to 1.5, got -1',
    );
    expect(() => parseNumberOption('0', 'max-tokens', { integer: true, min: 1 })).toThrow('--max-tokens must be an integer ≥ 1, got 0');
    expect(() => parseNumberOption('0', 'top-p', { above: 0, max: 1 })).toThrow('--top-p must be a number > 0 and ≤ 1, got 0');
    expect(() => parseNumberOption('', 'seed', { integer: true })).toThrow('--seed must be an integer, got ""');
    expect(() => parseNumberOption('2.5', 'seed', { integer: true, min: 0 })).toThrow(/^--seed must be an integer ≥ 0, got 2.5$/);
  });

  it('accepts the bounds themselves', () => {
    expect(parseNumberOption('0', 'temperature', { min: 0, max: 1.5 })).toBe(0);
    expect(parseNumberOption('1.5', 'temperature', { min: 0, max: 1.5 })).toBe(1.5);
    expect(parseNumberOption('1', 'top-p', { above: 0, max: 1 })).toBe(1);
    expect(parseNumberOption(undefined, 'top-p')).toBeUndefined();
  });
});

describe('did you mean', () => {
  it('measures edits', () => {
    expect(editDistance('tempature', 'temperature')).toBe(2);
    expect(editDistance('', 'abc')).toBe(3);
    expect(editDistance('same', 'same')).toBe(0);
    expect(editDistance('prot', 'port')).toBe(1); // a swap of neighbours is one typo
  });

  it('picks the closest known name only when it is close', () => {
    expect(closestName('tempature', ['temperature', 'top-p', 'seed'])).toBe('temperature');
    expect(closestName('sed', ['temperature', 'top-p', 'seed'])).toBe('seed');
    expect(closestName('frobnicate', ['temperature', 'top-p', 'seed'])).toBeUndefined();
  });
});
