/** The `sirocco` CLI run as a user runs it: `node bin/sirocco.mjs …` from the repository root. */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';

const ROOT = new URL('../..', import.meta.url).pathname;

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the CLI with `home` as SIROCCO_HOME; a non-zero exit is a result, not a rejection. */
export function runSirocco(home: string, ...args: string[]): Promise<CliResult> {
  return runSiroccoWith({ home }, ...args);
}

/** runSirocco with more environment variables (e.g. SIROCCO_ADMIN_SECRET for the admin commands). */
export async function runSiroccoWith(options: { home: string; env?: Record<string, string> }, ...args: string[]): Promise<CliResult> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [join(ROOT, 'bin/sirocco.mjs'), ...args], {
      cwd: ROOT,
      env: { ...process.env, ...options.env, SIROCCO_HOME: options.home },
      maxBuffer: 64 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as CliResult;
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}
