/**
 * `sirocco` command-line dispatcher. Each subcommand lives in cli/commands/<name>.ts and exports
 * `run(argv: string[]): Promise<number>` (the exit code) plus a one-line `summary`.
 */
import { readFileSync } from 'node:fs';
import { CliError } from './args.ts';

const COMMANDS = ['convert', 'logits', 'generate', 'serve', 'keys', 'usage', 'dev', 'deploy'] as const;
type CommandName = (typeof COMMANDS)[number];

interface CommandModule {
  summary: string;
  run(argv: string[]): Promise<number>;
}

function isCommand(name: string): name is CommandName {
  return (COMMANDS as readonly string[]).includes(name);
}

async function loadCommand(name: CommandName): Promise<CommandModule> {
  return (await import(`./commands/${name}.ts`)) as CommandModule;
}

/** The version in the package.json beside cli/, the one `npx sirocco` was installed as. */
export function packageVersion(): string {
  const manifest: unknown = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
  const version = typeof manifest === 'object' && manifest !== null && 'version' in manifest ? manifest.version : undefined;
  return typeof version === 'string' ? version : 'unknown';
}

async function usage(): Promise<string> {
  const lines = ['usage: sirocco <command> [options]', '       sirocco --version', '', 'commands:'];
  for (const name of COMMANDS) {
    try {
      lines.push(`  ${name.padEnd(10)} ${(await loadCommand(name)).summary}`);
    } catch {
      // A command module that is not built yet is simply not listed.
    }
  }
  lines.push('', 'Run `sirocco <command> --help` for its options and examples.');
  return lines.join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(await usage());
    return name ? 0 : 2;
  }
  if (name === '--version' || name === '-v') {
    console.log(packageVersion());
    return 0;
  }
  if (!isCommand(name)) {
    console.error(`sirocco: unknown command "${name}"\n\n${await usage()}`);
    return 2;
  }
  try {
    return await (await loadCommand(name)).run(rest);
  } catch (error) {
    if (error instanceof CliError) {
      console.error(`sirocco ${name}: ${error.message}`);
      return error.exitCode;
    }
    // Errors from the engine carry messages that name the file or tensor; print them without a stack.
    const message = error instanceof Error ? error.message : String(error);
    console.error(`sirocco ${name}: ${message}`);
    if (process.env.SIROCCO_DEBUG) console.error(error);
    return 1;
  }
}
