/**
 * The project's `.dev.vars` (git-ignored, at the repository root; SIROCCO_DEV_VARS names another file): where `npm start` keeps the secrets and the dev
 * API key it generated, so a restart reuses them (keys made against one start still work after the next) and
 * `sirocco keys` finds the admin secret. wrangler dev reads the same file for the worker's local secrets, so the
 * format is the one it parses (dotenv): `NAME=value` lines, `#` comments, values optionally quoted.
 */
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { devVarsFile, dotenvLine } from './processes.ts';

export { devVarsFile } from './processes.ts';

/** The variables in a dotenv text; later lines win, as in dotenv. Escaped `\$` (see dotenvLine) reads back as `$`. */
export function parseDevVars(text: string): Map<string, string> {
  const vars = new Map<string, string>();
  for (const rawLine of text.split(/\r?\n/)) {
    const match = /^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$/.exec(rawLine);
    if (!match) continue;
    const [, name, rawValue = ''] = match;
    if (name === undefined) continue;
    const quote = rawValue[0];
    let value: string;
    if ((quote === "'" || quote === '"' || quote === '`') && rawValue.length >= 2 && rawValue.endsWith(quote)) {
      value = rawValue.slice(1, -1);
      if (quote === '"') value = value.replaceAll('\\n', '\n');
    } else {
      // An unquoted value ends at a comment.
      value = rawValue.replace(/\s+#.*$/, '');
    }
    vars.set(name, value.replaceAll('\\$', '$'));
  }
  return vars;
}

/** The file's variables; an absent file has none. */
export async function readDevVars(file: string = devVarsFile()): Promise<Map<string, string>> {
  try {
    return parseDevVars(await readFile(file, 'utf8'));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return new Map();
    throw error;
  }
}

/**
 * Sets `updates` in the file, keeping every other line (comments, the user's own secrets) as it was: a variable
 * already there is rewritten in place, a new one appended. The file is created, and kept, readable by its owner only.
 */
export async function writeDevVars(updates: Record<string, string>, file: string = devVarsFile()): Promise<void> {
  let text = '';
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  const pending = new Map(Object.entries(updates));
  const lines = text === '' ? [] : text.replace(/\n$/, '').split('\n');
  const rewritten = lines.map((line) => {
    const name = /^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=/.exec(line)?.[1];
    const value = name === undefined ? undefined : pending.get(name);
    if (name === undefined || value === undefined) return line;
    pending.delete(name);
    return dotenvLine(name, value);
  });
  for (const [name, value] of pending) rewritten.push(dotenvLine(name, value));
  await writeFile(file, `${rewritten.join('\n')}\n`, { mode: 0o600 });
  // `mode` applies only when the file is created: tighten one that existed.
  await chmod(file, 0o600);
}
