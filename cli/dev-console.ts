/**
 * What `npm start` shows of `wrangler dev`'s output: one compact line per request from the edge's JSON access log
 * (401/403/429 included), the edge's other events in short, wrangler's warnings and errors; not wrangler's own
 * request lines (the access line says more), its start-up banner and bindings table, or the edge's per-request
 * usage lines (their tokens are on the access line).
 */

type EdgeLogLine = Record<string, unknown> & { level?: unknown; event?: unknown };

/** wrangler's lines that say nothing an operator needs while the stack runs. */
const WRANGLER_ROUTINE = [
  /^\[wrangler:info\]/,
  /^\s*⛅️ wrangler/,
  /^\s*─+\s*$/,
  /^Using (secrets|vars) defined in /,
  /^Your Worker has access to the following bindings:/,
  /^Binding\s+Resource\s+Mode\s*$/,
  /^env\.[A-Z_]+ /,
  /\s(Environment Variable|KV Namespace|Durable Object|Assets)\s+local\s*$/,
  /^⎔ Starting local server/,
  // Offline, wrangler cannot download the `request.cf` placeholder; it says so with a stack trace.
  /Unable to fetch the `Request.cf` object/,
  /getaddrinfo ENOTFOUND workers\.cloudflare\.com/,
  /^\s+at .*(GetAddrInfoReqWrap|callbackTrampoline)/,
  // The usage ledger's cron trigger: wrangler dev never fires it, and says so at every start.
  /Scheduled Workers are not automatically triggered during local development/,
  /^\s*To manually trigger a scheduled event, run:/,
  /^\s*curl "http:\/\/[^"]*\/cdn-cgi\/handler\/scheduled"/,
  /^\s*For more details, see .*cron-triggers/,
];

/** A line of `wrangler d1 migrations apply` worth showing: its errors and warnings (its banner, tables and prompts are not). */
export function describeMigrationsLine(line: string): string | undefined {
  return /✘|\[ERROR\]|▲|\[WARNING\]/.test(line) ? line : undefined;
}

/** A sidecar's access-log line for a readiness probe (ours at start-up, the edge's periodic ones). */
const SIDECAR_PROBE = /"msg":"request".*"path":"\/(ready|health)"/;

/** The console line for one line of a sidecar's output, or undefined to leave it out. */
export function describeSidecarLine(line: string): string | undefined {
  return SIDECAR_PROBE.test(line) ? undefined : line;
}

function parseEdgeLog(line: string): EdgeLogLine | undefined {
  if (!line.startsWith('{')) return undefined;
  try {
    const parsed: unknown = JSON.parse(line);
    return parsed && typeof parsed === 'object' && !Array.isArray(parsed) ? (parsed as EdgeLogLine) : undefined;
  } catch {
    return undefined;
  }
}

const shown = (value: unknown): string => (value === undefined || value === null || value === '' ? '-' : String(value));

/** `POST /v1/chat/completions 200  key 8c4ec6f84edd9635  model mistral-tiny  region eu-west  tokens 8 (5+3)  cache MISS  26 ms` */
export function describeAccessLine(record: EdgeLogLine): string {
  const tokens =
    typeof record.tokens === 'number'
      ? `${record.tokens} (${shown(record.promptTokens)}+${shown(record.completionTokens)})`
      : shown(record.tokens);
  const duration =
    typeof record.completedMs === 'number'
      ? `${shown(record.durationMs)} ms (end ${record.completedMs} ms)`
      : `${shown(record.durationMs)} ms`;
  return [
    `${shown(record.method)} ${shown(record.path)} ${shown(record.status)}`,
    `key ${shown(record.keyId)}`,
    `model ${shown(record.model)}`,
    `region ${shown(record.region)}`,
    `tokens ${tokens}`,
    ...(record.cache === undefined ? [] : [`cache ${shown(record.cache)}`]),
    duration,
  ].join('  ');
}

/** An edge event other than the access line, as `warn upstream_attempt_failed region=eu-west problem=…`. */
function describeEvent(record: EdgeLogLine): string {
  const { level, event, time: _time, ...fields } = record;
  const details = Object.entries(fields)
    .filter(([, value]) => value !== undefined && value !== null)
    .map(([name, value]) => `${name}=${typeof value === 'string' ? value : JSON.stringify(value)}`);
  return [shown(level), shown(event), ...details].join(' ');
}

/** The console line for one line of wrangler dev's output, or undefined to leave it out. */
export function describeWranglerLine(line: string): string | undefined {
  const record = parseEdgeLog(line);
  if (record === undefined) return WRANGLER_ROUTINE.some((pattern) => pattern.test(line)) ? undefined : line;
  if (record.event === 'request') {
    // Probes of /health that pass (ours at start-up, a monitor's) would drown the requests that matter.
    if (record.path === '/health' && typeof record.status === 'number' && record.status < 400) return undefined;
    return describeAccessLine(record);
  }
  if (record.event === 'usage' && record.level === 'info') return undefined;
  return describeEvent(record);
}
