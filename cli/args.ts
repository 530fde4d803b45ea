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

/**
 * Runs a script's `main` (the benches): a CliError is printed as `name: message` and exits with its
 * code, without a stack; any other error is rethrown as it was.
 */
export async function runScript(name: string, main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (error) {
    if (!(error instanceof CliError)) throw error;
    console.error(`${name}: ${error.message}`);
    process.exit(error.exitCode);
  }
}

type Options = NonNullable<ParseArgsConfig['options']>;

/** A token that is a negative number (`-1`, `-0.5`, `-1e3`), which parseArgs would take for a flag. */
const NEGATIVE_NUMBER = /^-(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

/**
 * Parses `argv` strictly; unknown flags (with a "did you mean" when one is close), missing values
 * and stray arguments become a CliError naming the flag. A negative number after a flag that takes
 * a value is that flag's value, so `--temperature -1` reaches the range check.
 */
export function parseCommandArgs<T extends Options>(argv: string[], options: T) {
  const args = joinNegativeValues(argv, options);
  rejectUnknownOptions(args, options);
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false });
  } catch (error) {
    throw new CliError(parseArgsMessage(error));
  }
}

function joinNegativeValues(argv: string[], options: Options): string[] {
  const args: string[] = [];
  for (let index = 0; index < argv.length; index++) {
    const token = argv[index] ?? '';
    const next = argv[index + 1];
    if (token === '--') return [...args, ...argv.slice(index)];
    const name = token.startsWith('--') && !token.includes('=') ? token.slice(2) : null;
    if (
      name !== null &&
      Object.hasOwn(options, name) &&
      options[name]?.type === 'string' &&
      next !== undefined &&
      NEGATIVE_NUMBER.test(next)
    ) {
      args.push(`${token}=${next}`);
      index++;
    } else args.push(token);
  }
  return args;
}

function rejectUnknownOptions(args: string[], options: Options): void {
  const known = Object.keys(options);
  for (const token of args) {
    if (token === '--') return;
    if (!token.startsWith('--')) continue;
    const name = token.slice(2).split('=', 1)[0] ?? '';
    if (Object.hasOwn(options, name)) continue;
    const suggestion = closestName(name, known);
    throw new CliError(`unknown option --${name}${suggestion ? `; did you mean --${suggestion}?` : ''}`);
  }
}

/** The known name nearest to `name` by edit distance, when it is close enough to be a typo. */
export function closestName(name: string, known: readonly string[]): string | undefined {
  const tolerance = Math.max(1, Math.floor(name.length / 3));
  let best: { name: string; distance: number } | undefined;
  for (const candidate of known) {
    const distance = editDistance(name, candidate);
    if (distance <= tolerance && (!best || distance < best.distance)) best = { name: candidate, distance };
  }
  return best?.name;
}

/** Edit distance where an insertion, a deletion, a substitution or a swap of neighbours each cost 1. */
export function editDistance(a: string, b: string): number {
  const rows: number[][] = [Array.from({ length: b.length + 1 }, (_, j) => j)];
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min((rows[i - 1]?.[j] ?? 0) + 1, (row[j - 1] ?? 0) + 1, (rows[i - 1]?.[j - 1] ?? 0) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) best = Math.min(best, (rows[i - 2]?.[j - 2] ?? 0) + 1);
      row.push(best);
    }
    rows.push(row);
  }
  return rows[a.length]?.[b.length] ?? 0;
}

/** parseArgs' own wording for the mistakes the pre-checks above leave to it, in the CLI's voice. */
function parseArgsMessage(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const code = (error as { code?: unknown }).code;
  const flag = /'(-{1,2}[\w-]+)/.exec(error.message)?.[1];
  if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && flag && /argument missing/.test(error.message)) return `${flag} needs a value`;
  if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && flag) return `unknown option ${flag}`;
  if (code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') {
    const argument = /'([^']*)'/.exec(error.message)?.[1];
    return `unexpected argument "${argument ?? ''}": every value follows its flag (see --help)`;
  }
  return error.message;
}

export function requireOption(value: string | undefined, flag: string): string {
  if (value === undefined || value === '') throw new CliError(`missing required option --${flag}`);
  return value;
}

export interface NumberRange {
  integer?: boolean;
  /** Smallest allowed value. */
  min?: number;
  /** The value must be strictly greater than this (for "positive" without a smallest value). */
  above?: number;
  max?: number;
}

/** A range in words: "an integer ≥ 1", "a number from 0 to 1.5", "a number > 0 and ≤ 1". */
export function describeRange({ integer = false, min = -Infinity, above, max = Infinity }: NumberRange): string {
  const kind = integer ? 'an integer' : 'a number';
  // Number.MIN_VALUE as a minimum means "positive".
  const lowerExclusive = above ?? (min === Number.MIN_VALUE ? 0 : undefined);
  const hasMax = max < Infinity;
  if (lowerExclusive !== undefined) return `${kind} > ${lowerExclusive}${hasMax ? ` and ≤ ${max}` : ''}`;
  if (min > -Infinity && hasMax) return `${kind} from ${min} to ${max}`;
  if (min > -Infinity) return `${kind} ≥ ${min}`;
  if (hasMax) return `${kind} ≤ ${max}`;
  return kind;
}

export function parseNumberOption(value: string | undefined, flag: string, range: NumberRange = {}): number | undefined {
  if (value === undefined) return undefined;
  const { integer = false, min = -Infinity, above = -Infinity, max = Infinity } = range;
  const parsed = Number(value);
  const valid =
    value.trim() !== '' &&
    Number.isFinite(parsed) &&
    (!integer || Number.isInteger(parsed)) &&
    parsed >= min &&
    parsed > above &&
    parsed <= max;
  if (!valid) throw new CliError(`--${flag} must be ${describeRange(range)}, got ${value.trim() === '' ? '""' : value}`);
  return parsed;
}
