/**
 * Reading the ledger: aggregated rows from the rollups (daily, or hourly when grouped by hour) and recent raw
 * events. Column names come from fixed tables below, values are always bound parameters.
 */
import type { UsageDimension, UsageEventView, UsageRow } from '../../shared/usage.ts';

export type UsageQuery = {
  from: string;
  to: string;
  groupBy: UsageDimension[];
  keyId?: string;
  tenant?: string;
  model?: string;
};

/** The column each dimension groups by; grouping by key also fills tenant (a key belongs to one tenant). */
const COLUMNS: Record<UsageDimension, string[]> = {
  key: ['key_id', 'tenant'],
  tenant: ['tenant'],
  model: ['model'],
  day: ['day'],
  hour: ['hour'],
};
const ROW_DIMENSIONS = ['key_id', 'tenant', 'model', 'day', 'hour'] as const;

export async function queryUsage(db: D1Database, query: UsageQuery): Promise<UsageRow[]> {
  const grouped = [...new Set(query.groupBy.flatMap((dimension) => COLUMNS[dimension]))];
  const table = query.groupBy.includes('hour') ? 'usage_hourly' : 'usage_daily';
  const select = ROW_DIMENSIONS.map((column) => (grouped.includes(column) ? column : `NULL AS ${column}`));
  const conditions = ['day >= ?', 'day <= ?'];
  const params: string[] = [query.from, query.to];
  for (const [column, value] of [
    ['key_id', query.keyId],
    ['tenant', query.tenant],
    ['model', query.model],
  ] as const) {
    if (value === undefined) continue;
    conditions.push(`${column} = ?`);
    params.push(value);
  }
  const sql = `SELECT ${select.join(', ')}, SUM(requests) AS requests, SUM(prompt_tokens) AS prompt_tokens,
      SUM(completion_tokens) AS completion_tokens, SUM(cached_requests) AS cached_requests,
      SUM(error_requests) AS error_requests, SUM(cost_micros) AS cost_micros
    FROM ${table} WHERE ${conditions.join(' AND ')}
    GROUP BY ${grouped.join(', ')}
    ORDER BY cost_micros DESC, ${grouped.join(', ')}`;
  const { results } = await db
    .prepare(sql)
    .bind(...params)
    .all<UsageRow>();
  return results;
}

export type EventsQuery = { limit: number; errorsOnly: boolean; keyId?: string; sinceMs: number };

type EventRow = Omit<UsageEventView, 'cached' | 'time'> & { cached: number; time_ms: number };

/** The newest raw events still within retention. */
export async function recentEvents(db: D1Database, query: EventsQuery): Promise<UsageEventView[]> {
  const conditions = ['time_ms >= ?'];
  const params: (string | number)[] = [query.sinceMs];
  if (query.errorsOnly) conditions.push('status >= 400');
  if (query.keyId !== undefined) {
    conditions.push('key_id = ?');
    params.push(query.keyId);
  }
  const { results } = await db
    .prepare(
      `SELECT time_ms, request_id, key_id, tenant, model, region, prompt_tokens, completion_tokens, cached, status, cost_micros
       FROM usage_events WHERE ${conditions.join(' AND ')} ORDER BY time_ms DESC, event_id DESC LIMIT ?`,
    )
    .bind(...params, query.limit)
    .all<EventRow>();
  return results.map(({ time_ms, cached, ...event }) => ({
    time: new Date(time_ms).toISOString(),
    request_id: event.request_id,
    key_id: event.key_id,
    tenant: event.tenant,
    model: event.model,
    region: event.region,
    prompt_tokens: event.prompt_tokens,
    completion_tokens: event.completion_tokens,
    cached: cached === 1,
    status: event.status,
    cost_micros: event.cost_micros,
  }));
}
