/**
 * The Sirocco edge worker: a Mistral-compatible API in front of regional sidecars.
 * See edge/app.ts for the middleware order and routes.
 */
import { createApp } from './app.ts';
import type { EdgeBindings } from './env.ts';

/** Durable Object classes must be exported from the worker's main module. */
export { RateLimiter } from './rate-limit/index.ts';

const app = createApp();

export default {
  fetch: (request, env, ctx) => app.fetch(request, env, ctx),
} satisfies ExportedHandler<EdgeBindings>;

declare global {
  namespace Cloudflare {
    interface Env extends EdgeBindings {}
    interface GlobalProps {
      mainModule: typeof import('./index.ts');
      durableNamespaces: 'RateLimiter';
    }
  }
}
