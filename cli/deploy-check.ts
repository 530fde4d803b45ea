/**
 * What `sirocco deploy --check` finds wrong in a wrangler.toml before `wrangler deploy`: placeholder resource ids,
 * missing bindings, sidecars the edge cannot reach (this machine, a private network) or reaches in clear (http),
 * secrets that are not set. Pure: the caller reads the file and lists the secrets (cli/commands/deploy.ts).
 *
 * The edge parses SIDECARS and UPSTREAMS in full on every request (edge/config); this check looks only at what
 * decides whether a deployment can work at all, and names each problem by its field in the file.
 */
import { ENV } from '../shared/protocol.ts';

export type Severity = 'error' | 'warning';

export interface DeployProblem {
  /** `error` blocks a deploy; `warning` deserves a look. */
  severity: Severity;
  /** Where, as a path into wrangler.toml (`kv_namespaces[API_KEYS].id`) or `secrets.NAME`. */
  field: string;
  message: string;
  /** What to run or change. */
  fix?: string;
}

/** The worker's secrets as `wrangler secret list` reports them, or why they could not be listed. */
export type SecretsStatus = { listed: true; names: string[] } | { listed: false; reason: string; fix: string };

export interface DeployReport {
  ready: boolean;
  worker: string | undefined;
  problems: DeployProblem[];
  /** What the file binds, for the "ready" line. */
  summary: { kv: string[]; d1: string[]; queues: string[]; durableObjects: string[]; sidecars: string[]; upstreams: string[] };
  secrets: { checked: boolean; set: string[] };
}

/**
 * The bindings the worker cannot run without (the required members of EdgeBindings in edge/env.ts; a test keeps the
 * two in step). The optional ones (RESPONSE_CACHE, USAGE_QUEUE, USAGE_DB, ASSETS) are checked only when declared.
 */
export const REQUIRED_BINDINGS = [
  { kind: 'kv', name: 'API_KEYS' },
  { kind: 'durable_object', name: 'RATE_LIMITER' },
  { kind: 'durable_object', name: 'SPEND_LIMITER' },
] as const;

/** Secrets the edge reads (wrangler.toml's header lists them); UPSTREAMS adds the ones it names. */
const REQUIRED_SECRETS = [
  { name: ENV.sidecarSecret, why: 'the edge signs every sidecar request with it; sidecars started with it refuse unsigned ones' },
  { name: ENV.adminSecret, why: 'guards /admin/keys: without it no API key can be created' },
] as const;
const KEY_PEPPER = 'SIROCCO_KEY_PEPPER';

type Table = Record<string, unknown>;

const isTable = (value: unknown): value is Table => typeof value === 'object' && value !== null && !Array.isArray(value);
const tables = (value: unknown): Table[] => (Array.isArray(value) ? value.filter(isTable) : []);
const text = (value: unknown): string | undefined => (typeof value === 'string' ? value : undefined);

/** `wrangler.toml`'s example ids: zeros with a digit or two at the end (KV: 32 hex digits, D1: a UUID). */
export function isPlaceholderId(id: string): boolean {
  return /^0{20,}[0-9]{0,4}$/.test(id.replaceAll('-', ''));
}

/** Hosts a Worker cannot reach: this machine, and private or link-local networks. */
export function unreachableHost(hostname: string): string | undefined {
  const host = hostname.replace(/^\[|\]$/g, '').toLowerCase();
  if (host === 'localhost' || host.endsWith('.localhost') || host === '::1' || host === '0.0.0.0' || /^127\./.test(host)) {
    return 'this machine';
  }
  if (/^10\./.test(host) || /^192\.168\./.test(host) || /^172\.(1[6-9]|2\d|3[01])\./.test(host) || /^f[cd][0-9a-f]{2}:/.test(host)) {
    return 'a private network';
  }
  if (/^169\.254\./.test(host) || /^fe80:/.test(host)) return 'a link-local address';
  return undefined;
}

/** Keys a wrangler environment does not inherit from the top level: an `[env.NAME]` without them has none. */
const NOT_INHERITED = [
  'vars',
  'define',
  'kv_namespaces',
  'd1_databases',
  'durable_objects',
  'queues',
  'r2_buckets',
  'services',
  'analytics_engine_datasets',
  'hyperdrive',
  'vectorize',
  'ai',
  'browser',
] as const;

/**
 * The configuration `wrangler deploy --env NAME` uses: the top level with `[env.NAME]` over it, bindings and vars only
 * from the environment (wrangler does not inherit them), migrations from the top level, and the worker named
 * `<name>-<env>` unless the environment names it. Undefined when the file has no such environment.
 */
export function configForEnvironment(config: Table, environment: string): Table | undefined {
  const environments = isTable(config.env) ? config.env : {};
  const section = environments[environment];
  if (!isTable(section)) return undefined;
  const inherited = Object.fromEntries(
    Object.entries(config).filter(([key]) => key !== 'env' && !(NOT_INHERITED as readonly string[]).includes(key)),
  );
  const name = text(section.name) ?? (text(config.name) ? `${text(config.name)}-${environment}` : undefined);
  return { ...inherited, ...section, name, migrations: config.migrations };
}

export function checkDeployment(config: Table, secrets: SecretsStatus, options: { mainExists: boolean }): DeployReport {
  const problems: DeployProblem[] = [];
  const error = (field: string, message: string, fix?: string) => problems.push({ severity: 'error', field, message, fix });
  const warning = (field: string, message: string, fix?: string) => problems.push({ severity: 'warning', field, message, fix });

  const worker = text(config.name);
  if (!worker) error('name', 'the worker has no name', 'set name = "sirocco-edge" (or your own)');
  if (!text(config.main)) error('main', 'no entry point', 'set main = "edge/index.ts"');
  else if (!options.mainExists) error('main', `"${text(config.main)}" does not exist (relative to wrangler.toml)`);

  const flags = Array.isArray(config.compatibility_flags) ? config.compatibility_flags : [];
  if (!flags.includes('enable_request_signal')) {
    warning('compatibility_flags', 'lacks "enable_request_signal": a client that disconnects does not stop its generation on the sidecar');
  }

  // ─── KV ───
  const kv = tables(config.kv_namespaces);
  for (const [index, namespace] of kv.entries()) {
    const binding = text(namespace.binding) ?? `#${index}`;
    const id = text(namespace.id);
    const field = `kv_namespaces[${binding}].id`;
    if (!id) error(field, 'missing', `npx wrangler kv namespace create ${binding}, then put the id it prints here`);
    else if (isPlaceholderId(id))
      error(field, `"${id}" is the example id`, `npx wrangler kv namespace create ${binding}, then put the id it prints here`);
    else if (!/^[0-9a-f]{32}$/i.test(id)) error(field, `"${id}" is not a KV namespace id (32 hex digits)`);
  }

  // ─── D1 ───
  const d1 = tables(config.d1_databases);
  for (const [index, database] of d1.entries()) {
    const binding = text(database.binding) ?? `#${index}`;
    const name = text(database.database_name) ?? binding;
    const id = text(database.database_id);
    const field = `d1_databases[${binding}].database_id`;
    const create = `npx wrangler d1 create ${name}, put its database_id here, then npx wrangler d1 migrations apply ${name} --remote`;
    if (!id) error(field, 'missing', create);
    else if (isPlaceholderId(id)) error(field, `"${id}" is the example id`, create);
  }

  // ─── Durable Objects ───
  const durableObjects = tables(isTable(config.durable_objects) ? config.durable_objects.bindings : undefined);
  const migratedClasses = new Set(
    tables(config.migrations).flatMap((migration) =>
      [migration.new_sqlite_classes, migration.new_classes].flatMap((list) =>
        Array.isArray(list) ? list.filter((name) => typeof name === 'string') : [],
      ),
    ),
  );
  for (const binding of durableObjects) {
    const name = text(binding.name) ?? '?';
    const className = text(binding.class_name);
    if (!className) error(`durable_objects.bindings[${name}].class_name`, 'missing');
    else if (!migratedClasses.has(className) && binding.script_name === undefined) {
      error(
        `migrations`,
        `no migration creates the Durable Object class "${className}" (bound as ${name})`,
        `add [[migrations]] with new_sqlite_classes = ["${className}"]`,
      );
    }
  }

  // ─── Queues ───
  const queues = isTable(config.queues) ? config.queues : {};
  const producers = tables(queues.producers);
  const consumedQueues = new Set(tables(queues.consumers).map((consumer) => text(consumer.queue)));
  for (const producer of producers) {
    const queue = text(producer.queue);
    if (queue && !consumedQueues.has(queue)) {
      warning(
        `queues.producers[${text(producer.binding) ?? queue}]`,
        `nothing in this worker consumes "${queue}"`,
        `add [[queues.consumers]] queue = "${queue}"`,
      );
    }
  }

  const bound = {
    kv: new Set(kv.map((namespace) => text(namespace.binding))),
    durable_object: new Set(durableObjects.map((binding) => text(binding.name))),
  };
  for (const required of REQUIRED_BINDINGS) {
    if (bound[required.kind].has(required.name)) continue;
    if (required.kind === 'kv') {
      error(
        `kv_namespaces[${required.name}]`,
        'the worker needs this KV binding',
        `add [[kv_namespaces]] binding = "${required.name}" with the id of npx wrangler kv namespace create ${required.name}`,
      );
    } else {
      error(
        `durable_objects.bindings[${required.name}]`,
        'the worker needs this Durable Object binding',
        "copy it and its [[migrations]] entry from the repository's wrangler.toml",
      );
    }
  }

  // ─── Sidecars and upstreams ───
  const vars = isTable(config.vars) ? config.vars : {};
  const sidecars = parseJsonVar(vars.SIDECARS, 'vars.SIDECARS', '[]', error);
  const sidecarList = Array.isArray(sidecars) ? sidecars : [];
  if (sidecars !== undefined && !Array.isArray(sidecars)) error('vars.SIDECARS', 'must be a JSON list of {region, url, models, …}');
  const sidecarRegions: string[] = [];
  for (const [index, sidecar] of sidecarList.entries()) {
    const field = `vars.SIDECARS[${index}].url`;
    const region = isTable(sidecar) ? text(sidecar.region) : undefined;
    sidecarRegions.push(region ?? `#${index}`);
    const url = isTable(sidecar) ? text(sidecar.url) : undefined;
    if (!url || !URL.canParse(url)) {
      error(field, `${url === undefined ? 'missing' : `"${url}" is not a URL`}`);
      continue;
    }
    const parsed = new URL(url);
    const where = unreachableHost(parsed.hostname);
    if (where) {
      error(field, `${url} is ${where}: a deployed worker cannot reach it`, "the sidecar's public https address (see docs/deploy.md)");
    }
    if (parsed.protocol === 'http:') {
      error(
        field,
        `${url} is plain http: prompts and answers would cross the network in clear`,
        'put TLS in front of the sidecar (docs/deploy.md) and use its https URL',
      );
    } else if (parsed.protocol !== 'https:') {
      error(field, `${url}: only https sidecars can be deployed`);
    }
  }

  const upstreams = parseJsonVar(vars.UPSTREAMS, 'vars.UPSTREAMS', '{}', error);
  const upstreamEntries = isTable(upstreams) ? Object.entries(upstreams) : [];
  if (upstreams !== undefined && !isTable(upstreams)) error('vars.UPSTREAMS', 'must be a JSON object: model name → {url, apiKeySecret}');
  const upstreamSecrets: Array<{ name: string; model: string }> = [];
  for (const [model, upstream] of upstreamEntries) {
    const url = isTable(upstream) ? text(upstream.url) : undefined;
    if (url && URL.canParse(url) && new URL(url).protocol === 'http:') {
      error(`vars.UPSTREAMS.${model}.url`, `${url} is plain http: the operator's API key would cross the network in clear`);
    }
    const secret = isTable(upstream) ? text(upstream.apiKeySecret) : undefined;
    if (secret) upstreamSecrets.push({ name: secret, model });
  }
  if (sidecarList.length === 0 && upstreamEntries.length === 0) {
    error('vars.SIDECARS', 'no sidecars and no UPSTREAMS: the edge would have no model to serve');
  }

  const cors = text(vars.CORS_ORIGINS);
  if (cors === undefined || cors.trim() === '*') {
    warning(
      'vars.CORS_ORIGINS',
      '"*": any web page may call the API with a key it holds',
      'list your sites, e.g. CORS_ORIGINS = "https://chat.example.com"',
    );
  }

  // ─── Secrets ───
  const wanted = [
    ...(sidecarList.length > 0 ? [REQUIRED_SECRETS[0]] : []),
    REQUIRED_SECRETS[1],
    ...upstreamSecrets.map(({ name, model }) => ({ name, why: `UPSTREAMS.${model} sends it as the upstream API key` })),
  ];
  if (secrets.listed) {
    const set = new Set(secrets.names);
    for (const secret of wanted) {
      if (!set.has(secret.name)) error(`secrets.${secret.name}`, `not set: ${secret.why}`, `npx wrangler secret put ${secret.name}`);
    }
    if (!set.has(KEY_PEPPER)) {
      warning(
        `secrets.${KEY_PEPPER}`,
        'not set: API keys are hashed with the admin secret, so rotating that secret orphans every key',
        `npx wrangler secret put ${KEY_PEPPER} (before the first key is created)`,
      );
    }
  } else {
    warning('secrets', `cannot check (${secrets.reason}): needed ${wanted.map((secret) => secret.name).join(', ')}`, secrets.fix);
  }

  return {
    ready: !problems.some((problem) => problem.severity === 'error'),
    worker,
    problems,
    summary: {
      kv: kv.map((namespace) => text(namespace.binding) ?? '?'),
      d1: d1.map((database) => text(database.binding) ?? '?'),
      queues: [...new Set(producers.map((producer) => text(producer.queue) ?? '?'))],
      durableObjects: durableObjects.map((binding) => text(binding.name) ?? '?'),
      sidecars: sidecarRegions,
      upstreams: upstreamEntries.map(([model]) => model),
    },
    secrets: { checked: secrets.listed, set: secrets.listed ? secrets.names : [] },
  };
}

/** A JSON-in-a-string var; undefined (after reporting it) when it does not parse. */
function parseJsonVar(raw: unknown, field: string, fallback: string, error: (field: string, message: string) => void): unknown {
  if (raw !== undefined && typeof raw !== 'string') {
    error(field, 'must be a string holding JSON (wrangler vars are strings)');
    return undefined;
  }
  try {
    return JSON.parse(raw ?? fallback);
  } catch (parseError) {
    error(field, `not valid JSON (${parseError instanceof Error ? parseError.message : String(parseError)})`);
    return undefined;
  }
}

/** The report as the terminal shows it: one line per problem, then the verdict. */
export function formatDeployReport(report: DeployReport, file: string): string {
  const lines = [`sirocco deploy --check: ${file}${report.worker ? ` (worker "${report.worker}")` : ''}`];
  for (const problem of report.problems) {
    lines.push(`  ${problem.severity === 'error' ? '✗' : '!'} ${problem.field}: ${problem.message}`);
    if (problem.fix) lines.push(`      → ${problem.fix}`);
  }
  const errors = report.problems.filter((problem) => problem.severity === 'error').length;
  const warnings = report.problems.length - errors;
  const plural = (count: number, word: string) => `${count} ${word}${count === 1 ? '' : 's'}`;
  if (!report.ready) {
    lines.push('', `not ready: ${plural(errors, 'blocking problem')}${warnings ? `, ${plural(warnings, 'warning')}` : ''}.`);
    return lines.join('\n');
  }
  const { summary } = report;
  const parts = [
    `KV ${summary.kv.join(', ') || 'none'}`,
    ...(summary.d1.length ? [`D1 ${summary.d1.join(', ')}`] : []),
    ...(summary.queues.length ? [`queue ${summary.queues.join(', ')}`] : []),
    `Durable Objects ${summary.durableObjects.join(', ')}`,
    `${plural(summary.sidecars.length, 'sidecar')} over https${summary.sidecars.length ? ` (${summary.sidecars.join(', ')})` : ''}`,
    ...(summary.upstreams.length ? [`upstreams ${summary.upstreams.join(', ')}`] : []),
    report.secrets.checked ? `secrets ${report.secrets.set.join(', ') || 'none'}` : 'secrets not checked',
  ];
  lines.push('', `ready${warnings ? ` (${plural(warnings, 'warning')})` : ''}: ${parts.join('; ')}.`, 'Next: npx wrangler deploy');
  return lines.join('\n');
}
