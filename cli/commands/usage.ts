/**
 * `sirocco usage`: an edge's usage ledger (GET /admin/usage) as a table, or `--json` for its rows.
 *
 *   sirocco usage --url URL [--from D] [--to D] [--group-by key|tenant|model|day] [--json]
 *
 * The admin secret comes from SIROCCO_ADMIN_SECRET, else from the repository's .dev.vars (as for `sirocco keys`).
 */
import Table from 'cli-table3';
import { ENV } from '../../shared/protocol.ts';
import { formatMicros, isCalendarDay, type UsageReport, UsageReportSchema, type UsageRow } from '../../shared/usage.ts';
import { callAdmin, defaultEdgeUrl } from '../admin-api.ts';
import { CliError, parseCommandArgs } from '../args.ts';
import { devVarsFile } from '../dev-vars.ts';

export const summary = "an edge's usage and spend by key, tenant, model or day (admin secret as for `sirocco keys`)";

/** What --group-by may name (comma-separated for several). */
const GROUPS = ['key', 'tenant', 'model', 'day'] as const;

const HELP = `usage: sirocco usage --url URL [--from D] [--to D] [--group-by key|tenant|model|day] [--json]

Prints the edge's usage ledger: requests, tokens and spend, summed over the days asked for.

  --url URL         the edge (default http://localhost:$PORT, 8787)
  --from D          first UTC day, YYYY-MM-DD (default: the first day of this month)
  --to D            last UTC day, included (default: today)
  --group-by G      key, tenant, model or day, or several comma-separated (default: key,model)
  --json            print the rows as a JSON array instead of a table

Amounts are in the edge's price currency (EUR by default). The admin secret is ${ENV.adminSecret} from the
environment, else from ${devVarsFile()} (where \`npm start\` keeps the one it generated).

examples:
  sirocco usage --url http://localhost:8787
  sirocco usage --url https://edge.example.com --from 2026-12-01 --to 2026-12-03 --group-by tenant,day --json`;

function dayOption(value: string | undefined, flag: string): string | undefined {
  if (value === undefined) return undefined;
  if (!isCalendarDay(value)) throw new CliError(`--${flag} must be a UTC day YYYY-MM-DD, got "${value}"`);
  return value;
}

function groupByOption(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  const names = value.split(',').map((name) => name.trim());
  for (const name of names) {
    if (!(GROUPS as readonly string[]).includes(name))
      throw new CliError(`--group-by takes ${GROUPS.join(', ')} (comma-separated), got "${value}"`);
  }
  return names.join(',');
}

/** The columns a report's grouping fills, then its figures. */
function renderTable(report: UsageReport): string {
  const dimensions: { title: string; value: (row: UsageRow) => string | null }[] = [];
  if (report.group_by.includes('key')) dimensions.push({ title: 'key', value: (row) => row.key_id });
  if (report.group_by.includes('key') || report.group_by.includes('tenant'))
    dimensions.push({ title: 'tenant', value: (row) => row.tenant });
  if (report.group_by.includes('model')) dimensions.push({ title: 'model', value: (row) => row.model });
  if (report.group_by.includes('day')) dimensions.push({ title: 'day', value: (row) => row.day });
  if (report.group_by.includes('hour')) dimensions.push({ title: 'hour', value: (row) => row.hour });
  const figures = ['requests', 'prompt tokens', 'completion tokens', 'cached', 'errors', `cost (${report.currency})`];
  const table = new Table({
    head: [...dimensions.map((dimension) => dimension.title), ...figures],
    colAligns: [...dimensions.map(() => 'left' as const), ...figures.map(() => 'right' as const)],
    style: { head: [], border: [] },
  });
  for (const row of report.data) {
    table.push([
      ...dimensions.map((dimension) => dimension.value(row) ?? ''),
      row.requests,
      row.prompt_tokens,
      row.completion_tokens,
      row.cached_requests,
      row.error_requests,
      formatMicros(row.cost_micros, '').trimEnd(),
    ]);
  }
  return table.toString();
}

export async function run(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(HELP);
    return 0;
  }
  const { values } = parseCommandArgs(argv, {
    url: { type: 'string' },
    from: { type: 'string' },
    to: { type: 'string' },
    'group-by': { type: 'string' },
    json: { type: 'boolean' },
  });
  const from = dayOption(values.from, 'from');
  const to = dayOption(values.to, 'to');
  if (from && to && from > to) throw new CliError(`--from (${from}) is after --to (${to})`);
  const query = new URLSearchParams();
  if (from) query.set('from', from);
  if (to) query.set('to', to);
  const groupBy = groupByOption(values['group-by']);
  if (groupBy) query.set('group_by', groupBy);

  const path = `/admin/usage${query.size > 0 ? `?${query}` : ''}`;
  const answer = await callAdmin(values.url ?? defaultEdgeUrl(), 'GET', path);
  const parsed = UsageReportSchema.safeParse(answer);
  if (!parsed.success) throw new CliError(`GET ${path} answered something that is not a usage report (is --url an edge?)`, 1);
  const report = parsed.data;
  if (values.json) console.log(JSON.stringify(report.data));
  else {
    console.log(`usage ${report.from} … ${report.to}, amounts in ${report.currency}`);
    console.log(report.data.length === 0 ? 'no usage recorded' : renderTable(report));
  }
  return 0;
}
