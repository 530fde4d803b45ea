/** Small shared helpers for subcommands: one argument parser (node:util parseArgs) and one usage error. */
import { type ParseArgsConfig, parseArgs } from 'node:util';

/** A user mistake on the command line: printed without a stack trace, exit code 2 by default. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 2,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

type Options = NonNullable<ParseArgsConfig['options']>;

/** Parses `argv` strictly; unknown flags and missing values become a CliError naming the flag. */
export function parseCommandArgs<T extends Options>(argv: string[], options: T) {
  try {
    return parseArgs({ args: argv, options, strict: true, allowPositionals: false });
  } catch (error) {
    throw new CliError(error instanceof Error ? error.message : String(error));
  }
}

export function requireOption(value: string | undefined, flag: string): string {
  if (value === undefined || value === '') throw new CliError(`missing required option --${flag}`);
  return value;
}

export function parseNumberOption(
  value: string | undefined,
  flag: string,
  { integer = false, min = -Infinity, max = Infinity }: { integer?: boolean; min?: number; max?: number } = {},
): number | undefined {
  if (value === undefined) return undefined;
  const parsed = Number(value);
  if (value.trim() === '' || !Number.isFinite(parsed) || (integer && !Number.isInteger(parsed)) || parsed < min || parsed > max) {
    const kind = integer ? 'an integer' : 'a number';
    const range = min > -Infinity || max < Infinity ? ` in [${min}, ${max}]` : '';
    throw new CliError(`--${flag} must be ${kind}${range}, got "${value}"`);
  }
  return parsed;
}
