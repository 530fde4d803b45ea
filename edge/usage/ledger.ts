/**
 * The producer side of the usage ledger: one event per finished chat request, sent to the `USAGE_QUEUE` queue
 * from waitUntil (never in front of a response). The consumer (./consumer.ts) writes batches into D1.
 * Without the binding (a deploy older than the ledger) requests are served as before and one warning per
 * isolate says that usage is not recorded.
 */
import type { Context } from 'hono';
import type { Usage } from '../../shared/api.ts';
import type { UsageEvent } from '../../shared/usage.ts';
import { pricesFrom } from '../config/index.ts';
import type { AppEnv, EdgeBindings } from '../env.ts';
import type { UsageOutcome } from '../routes/chat-completions.ts';
import { requestCostMicros } from './cost.ts';
import { settleSpend } from './spend.ts';

let warnedUnbound = false;

/** Queues `event`; resolves once the queue has it (or at once, without a queue). */
export async function emitUsageEvent(env: EdgeBindings, event: UsageEvent): Promise<void> {
  if (!env.USAGE_QUEUE) {
    if (!warnedUnbound) {
      warnedUnbound = true;
      console.warn(
        JSON.stringify({ level: 'warn', event: 'usage_ledger_unbound', message: 'USAGE_QUEUE is not bound: usage is not recorded' }),
      );
    }
    return;
  }
  await env.USAGE_QUEUE.send(event, { contentType: 'json' });
}

/**
 * A finished request's entry in the ledger and its spend: the event (priced with PRICES; 0 for a cache hit, which
 * used no model) is queued, and its cost and tokens are added to its key's and tenant's month.
 */
export async function recordUsageEvent(c: Context<AppEnv>, usage: Usage, outcome: UsageOutcome): Promise<void> {
  const key = c.get('apiKey');
  const route = c.get('chatRoute');
  if (!key || !route) return;
  const model = route.kind === 'local' ? route.model : route.name;
  const cost = outcome.cached ? 0 : requestCostMicros(pricesFrom(c.env), model, usage.prompt_tokens, usage.completion_tokens);
  const region = c.get('logger').annotations.region;
  const event: UsageEvent = {
    event_id: crypto.randomUUID(),
    time: new Date().toISOString(),
    request_id: c.get('requestId'),
    key_id: key.id,
    tenant: key.tenant,
    model,
    region: outcome.cached || typeof region !== 'string' ? null : region,
    prompt_tokens: usage.prompt_tokens,
    completion_tokens: usage.completion_tokens,
    cached: outcome.cached,
    status: outcome.status,
    cost_micros: cost,
  };
  await Promise.all([emitUsageEvent(c.env, event), settleSpend(c, key, cost, outcome.cached ? 0 : usage.total_tokens)]);
}
