/**
 * What the app's handlers share across requests in one isolate: the sidecar pool (circuits and
 * probe results) and the fetch used to reach sidecars and upstreams (a seam for tests).
 */
import type { Context } from 'hono';
import type { AppEnv } from './env.ts';
import type { SidecarPool } from './routing/index.ts';

export interface EdgeDependencies {
  pool: SidecarPool;
  fetch: typeof fetch;
}

/**
 * Resolves on a later turn of the event loop. Work chained on it (log lines, metering RPCs) runs
 * after the runtime has started sending the response, instead of delaying its first byte.
 */
export function afterResponse(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/** Runs `work` after the response when an execution context exists (always in Workers). */
export function inBackground(c: Context<AppEnv>, work: Promise<unknown>, onError: (error: unknown) => void): void {
  const guarded = work.catch(onError);
  try {
    c.executionCtx.waitUntil(guarded);
  } catch {
    // No execution context (app.request in a unit test): the promise still runs.
  }
}
