import { describe, expect, it } from 'vitest';
import { DEFAULT_TUNABLES, type SidecarConfig } from '../config/index.ts';
import { clientLocation, greatCircleKm, SidecarPool } from './index.ts';

const sidecars: SidecarConfig[] = [
  { region: 'us-east', url: 'http://us-east.test', models: ['mistral-tiny', 'mistral-small'], lat: 39.04, lon: -77.49, continent: 'NA' },
  { region: 'eu-west', url: 'http://eu-west.test', models: ['mistral-tiny', 'mistral-small'], lat: 48.86, lon: 2.35, continent: 'EU' },
  { region: 'eu-central', url: 'http://eu-central.test', models: ['mistral-tiny'], lat: 50.11, lon: 8.68, continent: 'EU' },
  { region: 'ap-south', url: 'http://ap-south.test', models: ['mistral-tiny'], continent: 'AS', countries: ['IN'] },
];

const regions = (pool: SidecarPool, model: string, cf: Parameters<typeof clientLocation>[0]) =>
  pool.rank(sidecars, model, clientLocation(cf), DEFAULT_TUNABLES).map((entry) => entry.sidecar.region);

describe('greatCircleKm', () => {
  it('matches known distances', () => {
    expect(greatCircleKm({ lat: 48.86, lon: 2.35 }, { lat: 51.51, lon: -0.13 })).toBeCloseTo(343, -1); // Paris–London
    expect(greatCircleKm({ lat: 40.71, lon: -74.0 }, { lat: 48.86, lon: 2.35 })).toBeCloseTo(5837, -2); // New York–Paris
  });
});

describe('SidecarPool.rank', () => {
  it('orders regions by distance from the client coordinates', () => {
    const pool = new SidecarPool();
    expect(regions(pool, 'mistral-tiny', { latitude: '40.7', longitude: '-74.0' })[0]).toBe('us-east');
    expect(regions(pool, 'mistral-tiny', { latitude: '52.5', longitude: '13.4' }).slice(0, 2)).toEqual(['eu-central', 'eu-west']);
  });

  it('falls back to the continent centroid, then to configuration order', () => {
    const pool = new SidecarPool();
    expect(regions(pool, 'mistral-small', { continent: 'EU' })).toEqual(['eu-west', 'us-east']);
    expect(regions(pool, 'mistral-small', {})).toEqual(['us-east', 'eu-west']);
  });

  it('puts a region that lists the client country first', () => {
    const pool = new SidecarPool();
    expect(regions(pool, 'mistral-tiny', { latitude: '48.8', longitude: '2.3', country: 'IN' })[0]).toBe('ap-south');
  });

  it('leaves out regions that do not serve the model or whose circuit is open', () => {
    const pool = new SidecarPool();
    for (let i = 0; i < DEFAULT_TUNABLES.circuitFailureThreshold; i++)
      pool.breaker('http://eu-west.test', DEFAULT_TUNABLES).recordFailure(Date.now());
    expect(regions(pool, 'mistral-small', { continent: 'EU' })).toEqual(['us-east']);
  });

  it('breaks distance ties by reported load and sends not-ready regions last', async () => {
    const pool = new SidecarPool();
    const reports: Record<string, { ready: boolean; queueDepth: number }> = {
      'http://eu-west.test': { ready: true, queueDepth: 0 },
      'http://eu-central.test': { ready: true, queueDepth: 10 },
      'http://us-east.test': { ready: false, queueDepth: 0 },
      'http://ap-south.test': { ready: true, queueDepth: 0 },
    };
    const fakeFetch: typeof fetch = async (input) => {
      const origin = new URL(input instanceof Request ? input.url : String(input)).origin;
      const report = reports[origin];
      if (!report) throw new TypeError('unknown origin');
      const body = {
        region: origin,
        models: ['mistral-tiny'],
        activeSequences: 0,
        maxBatch: 4,
        maxQueue: 12,
        tokensPerSecond: 1,
        ...report,
      };
      return Response.json(body, { status: report.ready ? 200 : 503 });
    };
    await pool.refreshStale(sidecars, DEFAULT_TUNABLES, { fetch: fakeFetch, timeoutMs: 1000, secret: undefined });
    // Frankfurt client: eu-central is nearer, but eu-west is within the same 300 km band and idle.
    expect(regions(pool, 'mistral-tiny', { latitude: '50.0', longitude: '5.5' })).toEqual(['eu-west', 'eu-central', 'ap-south', 'us-east']);
    expect(pool.health.get('http://us-east.test')).toMatchObject({ ready: false, problem: expect.stringMatching(/503/) });
  });

  it('probes only stale regions, once per TTL', async () => {
    const pool = new SidecarPool();
    let probes = 0;
    const fakeFetch: typeof fetch = async () => {
      probes += 1;
      return Response.json({
        ready: true,
        region: 'r',
        models: ['mistral-tiny'],
        queueDepth: 0,
        activeSequences: 0,
        maxBatch: 1,
        maxQueue: 1,
        tokensPerSecond: 1,
      });
    };
    const probe = { fetch: fakeFetch, timeoutMs: 1000, secret: 'shh' };
    await pool.refreshStale(sidecars, DEFAULT_TUNABLES, probe);
    expect(probes).toBe(4);
    expect(pool.refreshStale(sidecars, DEFAULT_TUNABLES, probe)).toBeNull();
    await pool.refreshStale(sidecars, DEFAULT_TUNABLES, probe, Date.now() + DEFAULT_TUNABLES.healthTtlMs);
    expect(probes).toBe(8);
  });
});
