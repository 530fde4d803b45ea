/**
 * The Sirocco edge worker: a Mistral-compatible API in front of regional sidecars.
 * See edge/app.ts for the middleware order and routes.
 */
import { createApp } from './app.ts';
import type { EdgeBindings } from './env.ts';

import { consumeUsageBatch, pruneUsageEvents } from './usage/index.ts';

/** Durable Object classes must be exported from the worker's main module. */
export { RateLimiter } from './rate-limit/index.ts';
export { SpendLimiter } from './usage/index.ts';

const app = createApp();

const worker: ExportedHandler<EdgeBindings, unknown> = {
  fetch: (request, env, ctx) => app.fetch(request, env, ctx),
  /** The usage ledger's consumer: batches of usage events into D1 (edge/usage/consumer.ts). */
  queue: (batch, env) => consumeUsageBatch(batch, env),
  /** The daily cron (wrangler.toml [triggers]): raw usage events past USAGE_RETENTION_DAYS are deleted. */
  scheduled: async (_controller, env) => {
    const deleted = await pruneUsageEvents(env);
    console.log(JSON.stringify({ level: 'info', event: 'usage_events_pruned', deleted }));
  },
};

export default worker;

declare global {
  namespace Cloudflare {
    interface Env extends EdgeBindings {}
    interface GlobalProps {
      mainModule: typeof import('./index.ts');
      durableNamespaces: 'RateLimiter' | 'SpendLimiter';
    }
  }
}
