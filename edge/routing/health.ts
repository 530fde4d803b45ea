/**
 * Sidecar health from `/ready` probes. Workers have no background timers, so probes run on demand:
 * a request that finds a result older than the TTL schedules a refresh in `waitUntil` and routes on
 * the cached state meanwhile (a sidecar never probed counts as ready; passive failure marking in the
 * circuit breaker covers the gap). Results live in the isolate's memory, one monitor per app.
 */
import { type LoadReport, LoadReportSchema, SIDECAR_PATHS } from '../../shared/protocol.ts';
import { signRequest } from '../../shared/signing.ts';

export interface SidecarHealth {
  /** null until the first probe answers. */
  ready: boolean | null;
  report: LoadReport | null;
  checkedAt: number;
  /** Why the last probe failed, for /health and logs. */
  problem: string | null;
}

export interface ProbeOptions {
  fetch: typeof fetch;
  timeoutMs: number;
  secret: string | undefined;
}

const UNKNOWN: SidecarHealth = { ready: null, report: null, checkedAt: -Infinity, problem: null };

export class HealthMonitor {
  readonly #health = new Map<string, SidecarHealth>();
  readonly #inFlight = new Map<string, Promise<SidecarHealth>>();

  get(url: string): SidecarHealth {
    return this.#health.get(url) ?? UNKNOWN;
  }

  isStale(url: string, now: number, ttlMs: number): boolean {
    return now - this.get(url).checkedAt >= ttlMs && !this.#inFlight.has(url);
  }

  /** Probes one sidecar (deduplicated while a probe is in flight) and stores the result. */
  probe(url: string, options: ProbeOptions): Promise<SidecarHealth> {
    const running = this.#inFlight.get(url);
    if (running) return running;
    const probing = probeReady(url, options)
      .then((health) => {
        this.#health.set(url, health);
        return health;
      })
      .finally(() => this.#inFlight.delete(url));
    this.#inFlight.set(url, probing);
    return probing;
  }
}

async function probeReady(baseUrl: string, { fetch: fetchImpl, timeoutMs, secret }: ProbeOptions): Promise<SidecarHealth> {
  const headers = secret ? await signRequest({ secret, method: 'GET', path: SIDECAR_PATHS.ready, body: '' }) : {};
  const checkedAt = Date.now();
  try {
    const response = await fetchImpl(new URL(SIDECAR_PATHS.ready, baseUrl), {
      headers: { ...headers },
      signal: AbortSignal.timeout(timeoutMs),
    });
    const parsed = LoadReportSchema.safeParse(await response.json().catch(() => null));
    if (!parsed.success)
      return { ready: false, report: null, checkedAt, problem: `/ready answered ${response.status} without a load report` };
    const ready = response.ok && parsed.data.ready;
    return { ready, report: parsed.data, checkedAt, problem: ready ? null : `not ready (HTTP ${response.status})` };
  } catch (error) {
    return { ready: false, report: null, checkedAt, problem: `probe failed: ${error instanceof Error ? error.message : String(error)}` };
  }
}
