/**
 * The consumer side of the usage ledger: the worker's `queue` handler writes each batch of usage events into D1
 * (`USAGE_DB`, schema in migrations/) in one transaction (a D1 batch):
 *
 *   1. each event: INSERT … ON CONFLICT(event_id) DO NOTHING, with rolled_up = 0;
 *   2. the hourly and daily rollups (per key × model) add the events still at rolled_up = 0, i.e. those really
 *      inserted and not yet counted;
 *   3. those events are marked rolled_up = 1.
 *
 * So a redelivered batch (or one event in two batches) is counted once, and a batch is counted entirely or not
 * at all. A failed write retries the whole batch (`retryAll`, with the queue's backoff; the events stay in the
 * queue, never acked and dropped); a message that is not a usage event is logged and acked (retrying cannot fix
 * it). Raw events older than USAGE_RETENTION_DAYS are deleted by the daily cron (`scheduled`), rollups are kept.
 */
import { type UsageEvent, UsageEventSchema } from '../../shared/usage.ts';
import { usageRetentionDaysFrom } from '../config/index.ts';
import type { EdgeBindings } from '../env.ts';

const DAY_MS = 86_400_000;
/** Seconds before a failed batch is delivered again. */
export const RETRY_DELAY_SECONDS = 10;

function hourOf(time: string): string {
  return `${time.slice(0, 13)}:00:00Z`;
}

function insertEvent(db: D1Database, event: UsageEvent): D1PreparedStatement {
  return db
    .prepare(
      `INSERT INTO usage_events (event_id, request_id, time_ms, hour, day, key_id, tenant, model, region,
         prompt_tokens, completion_tokens, cached, status, cost_micros)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT(event_id) DO NOTHING`,
    )
    .bind(
      event.event_id,
      event.request_id,
      Date.parse(event.time),
      hourOf(event.time),
      event.time.slice(0, 10),
      event.key_id,
      event.tenant,
      event.model,
      event.region,
      event.prompt_tokens,
      event.completion_tokens,
      event.cached ? 1 : 0,
      event.status,
      event.cost_micros,
    );
}

const TOTALS = `COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cached), SUM(status >= 400), SUM(cost_micros)`;
const ADD_TOTALS = `requests = requests + excluded.requests, prompt_tokens = prompt_tokens + excluded.prompt_tokens,
  completion_tokens = completion_tokens + excluded.completion_tokens, cached_requests = cached_requests + excluded.cached_requests,
  error_requests = error_requests + excluded.error_requests, cost_micros = cost_micros + excluded.cost_micros`;
const ROLLUP_COLUMNS = 'requests, prompt_tokens, completion_tokens, cached_requests, error_requests, cost_micros';

/** Writes events into the ledger, each counted in the rollups exactly once (see the module comment). */
export async function writeUsageEvents(db: D1Database, events: UsageEvent[]): Promise<void> {
  if (events.length === 0) return;
  // `WHERE true` keeps SQLite from reading ON CONFLICT as part of the SELECT's join.
  await db.batch([
    ...events.map((event) => insertEvent(db, event)),
    db.prepare(
      `INSERT INTO usage_hourly (hour, day, key_id, tenant, model, ${ROLLUP_COLUMNS})
       SELECT hour, day, key_id, tenant, model, ${TOTALS} FROM usage_events WHERE rolled_up = 0 GROUP BY hour, key_id, model
       ON CONFLICT(hour, key_id, model) DO UPDATE SET ${ADD_TOTALS}`,
    ),
    db.prepare(
      `INSERT INTO usage_daily (day, key_id, tenant, model, ${ROLLUP_COLUMNS})
       SELECT day, key_id, tenant, model, ${TOTALS} FROM usage_events WHERE rolled_up = 0 GROUP BY day, key_id, model
       ON CONFLICT(day, key_id, model) DO UPDATE SET ${ADD_TOTALS}`,
    ),
    db.prepare('UPDATE usage_events SET rolled_up = 1 WHERE rolled_up = 0'),
  ]);
}

/** The `queue` handler: one D1 transaction per batch; any failure retries the whole batch. */
export async function consumeUsageBatch(batch: MessageBatch<unknown>, env: EdgeBindings): Promise<void> {
  if (!env.USAGE_DB) {
    console.error(JSON.stringify({ level: 'error', event: 'usage_db_unbound', message: 'USAGE_DB is not bound: usage batch retried' }));
    batch.retryAll({ delaySeconds: RETRY_DELAY_SECONDS });
    return;
  }
  const events: UsageEvent[] = [];
  for (const message of batch.messages) {
    const parsed = UsageEventSchema.safeParse(message.body);
    if (parsed.success) events.push(parsed.data);
    else
      console.error(JSON.stringify({ level: 'error', event: 'usage_event_invalid', messageId: message.id, problem: parsed.error.message }));
  }
  try {
    await writeUsageEvents(env.USAGE_DB, events);
  } catch (error) {
    console.error(JSON.stringify({ level: 'error', event: 'usage_batch_failed', size: batch.messages.length, message: String(error) }));
    batch.retryAll({ delaySeconds: RETRY_DELAY_SECONDS });
    return;
  }
  batch.ackAll();
}

/** Deletes raw events older than the retention; returns how many went. */
export async function pruneUsageEvents(env: EdgeBindings, now = Date.now()): Promise<number> {
  if (!env.USAGE_DB) return 0;
  const cutoff = now - usageRetentionDaysFrom(env) * DAY_MS;
  const result = await env.USAGE_DB.prepare('DELETE FROM usage_events WHERE time_ms < ? AND rolled_up = 1').bind(cutoff).run();
  return result.meta.changes;
}

/** The oldest time (ms) a raw event may have and still be shown. */
export function retentionStartMs(env: EdgeBindings, now = Date.now()): number {
  return now - usageRetentionDaysFrom(env) * DAY_MS;
}
