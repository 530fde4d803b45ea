/**
 * Sidecar routing: which regions may serve a request and in what order.
 *
 * Order: sidecars that serve the model and whose circuit admits a request; ready ones (or never
 * probed) before not-ready ones; then the region the client named in `x-sirocco-region`; then the client's country if a region lists it; then great-circle
 * distance from the client (coordinates from `request.cf`, else its continent's centroid) in 300 km
 * bands; inside a band the lower reported load wins; finally configuration order. State (circuits,
 * probe results) lives in the isolate's memory, one `SidecarPool` per app.
 */
import type { SidecarConfig, Tunables } from '../config/index.ts';
import { CircuitBreaker } from './circuit-breaker.ts';
import { type ClientLocation, CONTINENT_CENTROIDS, type GeoPoint, greatCircleKm } from './geo.ts';
import { HealthMonitor, type ProbeOptions } from './health.ts';

export { CircuitBreaker, type CircuitState } from './circuit-breaker.ts';
export { type ForwardResult, forwardWithFailover, type Target } from './failover.ts';
export { type ClientGeo, type ClientLocation, clientLocation, greatCircleKm } from './geo.ts';
export { HealthMonitor, type SidecarHealth } from './health.ts';

/** Distances closer than this are treated as equal, so load can break the tie. */
const DISTANCE_BAND_KM = 300;

export interface RankedSidecar {
  sidecar: SidecarConfig;
  distanceKm: number | null;
  load: number;
  ready: boolean | null;
}

function sidecarPoint(sidecar: SidecarConfig): GeoPoint | null {
  if (sidecar.lat !== undefined && sidecar.lon !== undefined) return { lat: sidecar.lat, lon: sidecar.lon };
  return sidecar.continent ? (CONTINENT_CENTROIDS[sidecar.continent.toUpperCase()] ?? null) : null;
}

export class SidecarPool {
  readonly health = new HealthMonitor();
  readonly #breakers = new Map<string, CircuitBreaker>();

  breaker(url: string, tunables: Tunables): CircuitBreaker {
    const options = { failureThreshold: tunables.circuitFailureThreshold, cooldownMs: tunables.circuitCooldownMs };
    let breaker = this.#breakers.get(url);
    if (breaker) breaker.configure(options);
    else {
      breaker = new CircuitBreaker(options);
      this.#breakers.set(url, breaker);
    }
    return breaker;
  }

  /** Candidates for `model`, best first; sidecars with an open circuit are left out. */
  rank(sidecars: SidecarConfig[], model: string, location: ClientLocation, tunables: Tunables, now = Date.now()): RankedSidecar[] {
    const ranked = sidecars
      .map((sidecar, order) => {
        const health = this.health.get(sidecar.url);
        const point = sidecarPoint(sidecar);
        const report = health.report;
        const servesModel = sidecar.models.includes(model as SidecarConfig['models'][number]);
        const loadedModel = !report || report.models.includes(model);
        return {
          order,
          servesModel,
          available: this.breaker(sidecar.url, tunables).isAvailable(now),
          entry: {
            sidecar,
            distanceKm: location.point && point ? greatCircleKm(location.point, point) : null,
            load: report ? (report.queueDepth + report.activeSequences) / Math.max(1, report.maxBatch + report.maxQueue) : 0,
            ready: health.ready === null ? null : health.ready && loadedModel,
          } satisfies RankedSidecar,
        };
      })
      .filter((candidate) => candidate.servesModel && candidate.available);

    const key = ({ entry, order }: (typeof ranked)[number]) => [
      entry.ready === false ? 1 : 0,
      location.preferredRegion && entry.sidecar.region === location.preferredRegion ? 0 : 1,
      location.country && entry.sidecar.countries?.includes(location.country) ? 0 : 1,
      entry.distanceKm === null ? Infinity : Math.floor(entry.distanceKm / DISTANCE_BAND_KM),
      entry.load,
      order,
    ];
    ranked.sort((a, b) => {
      const left = key(a);
      const right = key(b);
      for (let i = 0; i < left.length; i++) if (left[i] !== right[i]) return (left[i] as number) - (right[i] as number);
      return 0;
    });
    return ranked.map((candidate) => candidate.entry);
  }

  /** Probes sidecars whose last result is older than the TTL; meant for `waitUntil`. */
  refreshStale(sidecars: SidecarConfig[], tunables: Tunables, probe: ProbeOptions, now = Date.now()): Promise<unknown> | null {
    const stale = sidecars.filter((sidecar) => this.health.isStale(sidecar.url, now, tunables.healthTtlMs));
    if (stale.length === 0) return null;
    return Promise.all(stale.map((sidecar) => this.health.probe(sidecar.url, probe)));
  }
}
