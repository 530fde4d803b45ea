/**
 * The usage ledger, prices and spend caps (see edge/README.md, "Usage ledger"):
 * - ./ledger.ts     the producer: one event per finished chat request to USAGE_QUEUE, in waitUntil;
 * - ./consumer.ts   the queue consumer writing D1 (USAGE_DB) idempotently, and the retention cron;
 * - ./query.ts      reading rollups and raw events (./params.ts validates the routes' query parameters);
 * - ./cost.ts       exact integer costs from the PRICES table;
 * - ./spend.ts      monthly spend/token caps per key and tenant through ./spend-limiter.ts (a Durable Object).
 */
import type { UsageReport } from '../../shared/usage.ts';
import { pricesFrom } from '../config/index.ts';
import type { AppEnv } from '../env.ts';
import { EdgeError } from '../errors.ts';
import { queryUsage, type UsageQuery } from './query.ts';

export { consumeUsageBatch, pruneUsageEvents, retentionStartMs, writeUsageEvents } from './consumer.ts';
export { costMicros, priceOf, requestCostMicros } from './cost.ts';
export { emitUsageEvent, recordUsageEvent } from './ledger.ts';
export { monthOf, nextMonthStartMs } from './month.ts';
export { recentEvents } from './query.ts';
export { keyCaps, keySubject, monthToDate, SpendHold, settleSpend, spendCaps, tenantSubject } from './spend.ts';
export { type MonthToDate, type SpendCaps, SpendLimiter } from './spend-limiter.ts';
export { listTenantCaps, putTenantCaps, tenantCaps } from './tenants.ts';

/** A usage report in the public shape (/admin/usage and /v1/usage): the query's rows, in PRICES' currency. */
export async function usageReport(env: AppEnv['Bindings'], query: UsageQuery): Promise<UsageReport> {
  const data = await queryUsage(ledgerDatabase(env), query);
  return { object: 'list', from: query.from, to: query.to, group_by: query.groupBy, currency: pricesFrom(env).currency, data };
}

/** The ledger database for a read route; unbound is a deployment error, named as such. */
export function ledgerDatabase(env: AppEnv['Bindings']): D1Database {
  if (!env.USAGE_DB) throw new EdgeError('internal_error', 'Edge configuration error: the usage ledger (D1 binding USAGE_DB) is not bound');
  return env.USAGE_DB;
}
