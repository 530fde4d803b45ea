/**
 * `sirocco keys create|list|revoke`: manage the edge's API keys through its admin routes.
 *
 *   sirocco keys create [--tenant T] [--models a,b] [--rpm N] [--tpm N] [--key K] [--url U] [--json]
 *   sirocco keys list [--url U] [--json]
 *   sirocco keys revoke <id> [--url U]
 *
 * The admin secret comes from SIROCCO_ADMIN_SECRET, else from the repository's .dev.vars (where `npm start`
 * keeps the one it generated); the edge URL defaults to http://localhost:$PORT (8787). A created key is printed
 * once: the edge keeps only its peppered hash.
 */
import { ENV } from '../../shared/protocol.ts';
import { formatMicros } from '../../shared/usage.ts';
import { callAdmin, defaultEdgeUrl as defaultUrl } from '../admin-api.ts';
import { CliError, parseCommandArgs, parseNumberOption, requireOption } from '../args.ts';
import { devVarsFile } from '../dev-vars.ts';

export const summary = 'create, list or revoke API keys on an edge (admin secret from SIROCCO_ADMIN_SECRET or .dev.vars)';

const USAGE = `usage:
  sirocco keys create [--tenant T] [--models a,b] [--rpm N] [--tpm N] [--key K] [--url URL] [--json]
  sirocco keys list [--url URL] [--json]
  sirocco keys revoke <id> [--url URL]

The admin secret is ${ENV.adminSecret} from the environment, else from ${devVarsFile()}
(where \`npm start\` keeps the one it generated). --url defaults to http://localhost:$PORT (8787).`;

interface KeyView {
  id: string;
  tenant: string;
  models: string[];
  rpm: number;
  tpm: number;
  created_at: number;
  key?: string;
  /** In listings: unix seconds of the last request (null: none yet), and the spend of the UTC month so far. */
  last_used_at?: number | null;
  spend_month_micros?: number;
}

/** Micro-units as a decimal amount (the edge's price table names the currency, EUR by default). */
function amount(micros: number): string {
  return formatMicros(micros, '').trimEnd();
}

function describeKey(key: KeyView): string {
  const created = new Date(key.created_at * 1000).toISOString();
  const fields = [
    key.id,
    `tenant=${key.tenant}`,
    `models=${key.models.join(',')}`,
    `rpm=${key.rpm}`,
    `tpm=${key.tpm}`,
    `created=${created}`,
  ];
  if (key.last_used_at !== undefined)
    fields.push(`last_used=${key.last_used_at === null ? 'never' : new Date(key.last_used_at * 1000).toISOString()}`);
  if (key.spend_month_micros !== undefined) fields.push(`spend_month=${amount(key.spend_month_micros)}`);
  return fields.join('  ');
}

async function create(argv: string[]): Promise<number> {
  const { values } = parseCommandArgs(argv, {
    url: { type: 'string' },
    tenant: { type: 'string' },
    models: { type: 'string' },
    rpm: { type: 'string' },
    tpm: { type: 'string' },
    key: { type: 'string' },
    json: { type: 'boolean' },
  });
  const models = values.models
    ?.split(',')
    .map((model) => model.trim())
    .filter(Boolean);
  if (values.models !== undefined && !models?.length) throw new CliError('--models needs at least one model name');
  const body = {
    tenant: values.tenant ?? 'default',
    models,
    rpm: parseNumberOption(values.rpm, 'rpm', { integer: true, min: 1 }),
    tpm: parseNumberOption(values.tpm, 'tpm', { integer: true, min: 1 }),
    key: values.key,
  };
  const created = (await callAdmin(values.url ?? defaultUrl(), 'POST', '/admin/keys', body)) as KeyView;
  if (values.json) console.log(JSON.stringify(created));
  else {
    console.log(created.key);
    console.error(`created ${describeKey(created)}\nstore the key now: it cannot be shown again`);
  }
  return 0;
}

async function list(argv: string[]): Promise<number> {
  const { values } = parseCommandArgs(argv, { url: { type: 'string' }, json: { type: 'boolean' } });
  const { data } = (await callAdmin(values.url ?? defaultUrl(), 'GET', '/admin/keys')) as { data: KeyView[] };
  if (values.json) console.log(JSON.stringify(data));
  else if (data.length === 0) console.log('no API keys');
  else for (const key of data) console.log(describeKey(key));
  return 0;
}

async function revoke(argv: string[]): Promise<number> {
  const [id, ...rest] = argv;
  const { values } = parseCommandArgs(rest, { url: { type: 'string' } });
  const keyId = requireOption(id?.startsWith('-') ? undefined : id, 'id (the key id shown by `sirocco keys list`)');
  if (!/^[0-9a-f]{16}$/.test(keyId)) throw new CliError(`a key id is 16 hex digits (see \`sirocco keys list\`), got "${keyId}"`);
  await callAdmin(values.url ?? defaultUrl(), 'DELETE', `/admin/keys/${keyId}`);
  console.log(`revoked ${keyId}`);
  return 0;
}

/** Each action's own help: its flags with their defaults, and an example. */
const ACTION_HELP: Record<string, string> = {
  create: `usage: sirocco keys create [options]

Creates an API key and prints it once (the edge keeps only its peppered hash).

  --tenant T     the tenant the key's usage belongs to (default "default")
  --models a,b   model names or ids the key may use (default: all)
  --rpm N        requests per minute (default 120)
  --tpm N        tokens per minute (default 2000000)
  --key K        use this value instead of a random sk-… key (at least 20 characters)
  --url URL      the edge (default http://localhost:$PORT, 8787)
  --json         print the created record as JSON, key included

example: sirocco keys create --tenant acme --models mistral-tiny --rpm 60`,
  list: `usage: sirocco keys list [--url URL] [--json]

Lists the keys (never their values): id, tenant, models, limits, creation time, last use and the spend of
the UTC month so far (in the edge's price currency, EUR by default).

example: sirocco keys list --json`,
  revoke: `usage: sirocco keys revoke <id> [--url URL]

Revokes the key with this id (16 hex digits, as \`sirocco keys list\` shows it).

example: sirocco keys revoke 61691f121e108b27`,
};

export async function run(argv: string[]): Promise<number> {
  const [action, ...rest] = argv;
  const actionHelp = action === undefined ? undefined : ACTION_HELP[action];
  if (actionHelp && (rest.includes('--help') || rest.includes('-h'))) {
    console.log(`${actionHelp}\n\nThe admin secret is ${ENV.adminSecret} from the environment, else from ${devVarsFile()}.`);
    return 0;
  }
  switch (action) {
    case 'create':
      return create(rest);
    case 'list':
      return list(rest);
    case 'revoke':
      return revoke(rest);
    case undefined:
    case '--help':
    case '-h':
      console.log(USAGE);
      return action === undefined ? 2 : 0;
    default:
      throw new CliError(`unknown action "${action}"\n${USAGE}`);
  }
}
