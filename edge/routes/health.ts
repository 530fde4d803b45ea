/**
 * `GET /health`: the edge is up. Unauthenticated (load balancers and `npm start` poll it); it
 * reports each region's circuit and last probe, never URLs or secrets.
 */
import type { Context } from 'hono';
import { sidecarsFrom, tunablesFrom } from '../config/index.ts';
import type { EdgeDependencies } from '../dependencies.ts';
import type { AppEnv } from '../env.ts';

export function healthRoute({ pool }: EdgeDependencies) {
  return (c: Context<AppEnv>) => {
    const tunables = tunablesFrom(c.env);
    const now = Date.now();
    const regions = sidecarsFrom(c.env).map((sidecar) => {
      const health = pool.health.get(sidecar.url);
      return {
        region: sidecar.region,
        models: sidecar.models,
        circuit: pool.breaker(sidecar.url, tunables).state(now),
        ready: health.ready,
        problem: health.problem,
      };
    });
    return c.json({ status: 'ok', regions });
  };
}
