/**
 * `sirocco deploy --check`: reads wrangler.toml and asks wrangler for the worker's secrets, then reports every problem
 * that would make a deployed edge fail (cli/deploy-check.ts), by field; exit 1 when one blocks. The deploy itself
 * stays `npx wrangler deploy` (docs/deploy.md).
 */
import { access, readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { stripVTControlCharacters } from 'node:util';
import { parse as parseToml, TomlError } from 'smol-toml';
import { CliError, parseCommandArgs } from '../args.ts';
import { checkDeployment, configForEnvironment, formatDeployReport, type SecretsStatus } from '../deploy-check.ts';
import { spawnNode, WRANGLER_BIN } from '../processes.ts';

export const summary = 'check wrangler.toml and the worker secrets before `wrangler deploy` (--check)';

const HELP = `usage: sirocco deploy --check [--config wrangler.toml] [--env NAME] [--json]

Checks a deployment before \`npx wrangler deploy\`, without changing anything: reads wrangler.toml and lists the
worker's secrets with \`wrangler secret list\`, then names every problem by its field:

  blocking   placeholder KV namespace or D1 database ids (the 0000… examples), a missing required binding
             (KV API_KEYS, Durable Objects RATE_LIMITER and SPEND_LIMITER) or Durable Object migration,
             SIDECARS that point at this machine or a private network, or use http instead of https, no
             sidecar and no upstream at all, invalid JSON in SIDECARS or UPSTREAMS, a missing entry point,
             secrets not set (SIROCCO_SIDECAR_SECRET, SIROCCO_ADMIN_SECRET, every UPSTREAMS apiKeySecret)
  warnings   SIROCCO_KEY_PEPPER not set, CORS_ORIGINS "*", a queue nothing consumes, no enable_request_signal,
             secrets that could not be listed (wrangler not logged in: run \`npx wrangler login\` or set
             CLOUDFLARE_API_TOKEN, then check again)

Exit code 0 with a one-line "ready" summary when nothing blocks, 1 otherwise, 2 for a usage error.

  --check               run the checks (required: deploying itself is \`npx wrangler deploy\`)
  --config FILE         the wrangler configuration (default ./wrangler.toml)
  --env NAME            check [env.NAME] as \`wrangler deploy --env NAME\` would deploy it (bindings and vars are
                        not inherited from the top level; the worker is <name>-NAME unless it is named)
  --json                print the report as JSON: {ready, worker, problems: [{severity, field, message, fix}], summary, secrets}
  -h, --help            this help

examples:
  npx sirocco deploy --check
  npx sirocco deploy --check --env production --json

The whole path (KV, D1, queues, secrets, sidecar hosts, TLS): docs/deploy.md`;

/** wrangler's answer can wait on the network; past this the secrets are reported as not checked. */
const SECRET_LIST_TIMEOUT_MS = 60_000;

export async function run(argv: string[]): Promise<number> {
  const { values } = parseCommandArgs(argv, {
    check: { type: 'boolean' },
    config: { type: 'string' },
    env: { type: 'string' },
    json: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (!values.check)
    throw new CliError('only --check is available: it checks wrangler.toml and the secrets; deploy with `npx wrangler deploy`');

  const file = resolve(values.config ?? 'wrangler.toml');
  const fileConfig = await readConfig(file);
  const environment = values.env;
  const config = environment === undefined ? fileConfig : configForEnvironment(fileConfig, environment);
  if (config === undefined) throw new CliError(`--env ${environment}: ${file} has no [env.${environment}] section`);
  const main = typeof config.main === 'string' ? resolve(dirname(file), config.main) : undefined;
  const mainExists =
    main !== undefined &&
    (await access(main).then(
      () => true,
      () => false,
    ));
  const secrets = await listSecrets(file, environment);

  const report = checkDeployment(config, secrets, { mainExists });
  const where = environment === undefined ? file : `${file} [env.${environment}]`;
  console.log(
    values.json ? JSON.stringify({ file, environment: environment ?? null, ...report }, null, 2) : formatDeployReport(report, where),
  );
  return report.ready ? 0 : 1;
}

async function readConfig(file: string): Promise<Record<string, unknown>> {
  let source: string;
  try {
    source = await readFile(file, 'utf8');
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : (error as Error).message;
    throw new CliError(`--config ${file}: ${reason} (run it where wrangler.toml is, or name the file with --config)`);
  }
  try {
    return parseToml(source);
  } catch (error) {
    if (error instanceof TomlError)
      throw new CliError(
        `--config ${file}: not valid TOML at line ${error.line}, column ${error.column}: ${error.message.split('\n')[0]}`,
        1,
      );
    throw error;
  }
}

/** The worker's secret names from `wrangler secret list`, or why there are none to show. */
async function listSecrets(file: string, environment: string | undefined): Promise<SecretsStatus> {
  const stdout: string[] = [];
  const wrangler = spawnNode({
    name: 'wrangler secret list',
    args: [
      WRANGLER_BIN,
      'secret',
      'list',
      '--format',
      'json',
      '--config',
      file,
      ...(environment === undefined ? [] : ['--env', environment]),
    ],
    env: { WRANGLER_SEND_METRICS: 'false' },
    onLine: (line, stream) => {
      if (stream === 'stdout') stdout.push(line);
    },
  });
  const timer = setTimeout(() => wrangler.kill('SIGKILL'), SECRET_LIST_TIMEOUT_MS);
  const code = await wrangler.exited;
  clearTimeout(timer);
  await wrangler.outputSettled();

  const login = 'npx wrangler login (or set CLOUDFLARE_API_TOKEN), then check again; npx wrangler secret list shows them';
  const output = wrangler.lastOutput;
  if (code === 0) {
    const start = stdout.findIndex((line) => line.trimStart().startsWith('['));
    try {
      const listed: unknown = JSON.parse(stdout.slice(start).join('\n'));
      if (start >= 0 && Array.isArray(listed)) {
        return { listed: true, names: listed.map((entry: { name?: unknown }) => entry?.name).filter((name) => typeof name === 'string') };
      }
    } catch {
      // Reported below as an answer that could not be read.
    }
    return { listed: false, reason: 'wrangler secret list answered something that is not a JSON list', fix: login };
  }
  if (code === null)
    return { listed: false, reason: `wrangler secret list did not answer within ${SECRET_LIST_TIMEOUT_MS / 1000} s`, fix: login };
  if (/CLOUDFLARE_API_TOKEN|not authenticated|wrangler login|Not logged in/i.test(output)) {
    return { listed: false, reason: 'wrangler is not logged in', fix: login };
  }
  // A worker never deployed has no secrets yet; `wrangler secret put` creates it.
  if (/\[code: 10007\]|does not exist/i.test(output)) return { listed: true, names: [] };
  const lastLine = output.split('\n').findLast((line) => /ERROR|✘/.test(line)) ?? output.split('\n').at(-1) ?? '';
  return { listed: false, reason: `wrangler secret list failed: ${stripVTControlCharacters(lastLine).trim()}`, fix: login };
}
