import { describe, expect, it } from 'vitest';
import { describeMigrationsLine, describeWranglerLine } from './dev-console.ts';

const accessLine = (fields: Record<string, unknown>) =>
  JSON.stringify({ level: 'info', event: 'request', time: '2026-01-01T00:00:00.000Z', requestId: 'r-1', ...fields });

describe("npm start's console lines for wrangler dev", () => {
  it('turns an access-log line into one compact line with key id, model, region, tokens, cache status and time', () => {
    const line = accessLine({
      method: 'POST',
      path: '/v1/chat/completions',
      status: 200,
      durationMs: 26,
      completedMs: 480,
      tenant: 'dev',
      keyId: '8c4ec6f84edd9635',
      cache: 'MISS',
      model: 'mistral-tiny',
      region: 'eu-west',
      promptTokens: 5,
      completionTokens: 3,
      tokens: 8,
    });
    expect(describeWranglerLine(line)).toBe(
      'POST /v1/chat/completions 200  key 8c4ec6f84edd9635  model mistral-tiny  region eu-west  tokens 8 (5+3)  cache MISS  26 ms (end 480 ms)',
    );
  });

  it('shows refused requests (401, 403, 429) with dashes for what they lack', () => {
    expect(describeWranglerLine(accessLine({ method: 'GET', path: '/v1/models', status: 401, durationMs: 1 }))).toBe(
      'GET /v1/models 401  key -  model -  region -  tokens -  1 ms',
    );
    const limited = describeWranglerLine(
      accessLine({
        method: 'POST',
        path: '/v1/chat/completions',
        status: 429,
        durationMs: 2,
        keyId: 'abcdef0123456789',
        model: 'mistral-small',
      }),
    );
    expect(limited).toBe('POST /v1/chat/completions 429  key abcdef0123456789  model mistral-small  region -  tokens -  2 ms');
  });

  it("leaves out passing /health probes, usage lines and wrangler's routine lines; keeps warnings and other events", () => {
    expect(describeWranglerLine(accessLine({ method: 'GET', path: '/health', status: 200, durationMs: 3 }))).toBeUndefined();
    expect(describeWranglerLine(accessLine({ method: 'GET', path: '/health', status: 503, durationMs: 3 }))).toContain('503');
    expect(describeWranglerLine(JSON.stringify({ level: 'info', event: 'usage', totalTokens: 8 }))).toBeUndefined();
    for (const routine of [
      '[wrangler:info] GET /v1/models 401 Unauthorized (6ms)',
      '[wrangler:info] Ready on http://127.0.0.1:8787',
      ' ⛅️ wrangler 4.86.0 (update available 4.164.0)',
      '──────────────────────────────────────────────',
      'Using secrets defined in ../../tmp/sirocco-wrangler-secrets-x/secrets.env',
      'Your Worker has access to the following bindings:',
      'Binding                                              Resource                  Mode',
      'env.API_KEYS (00000000000000000000000000000001)      KV Namespace              local',
      '⎔ Starting local server...',
      '\x1b[33m▲ \x1b[43;33m[\x1b[43;30mWARNING\x1b[43;33m]\x1b[0m \x1b[1mScheduled Workers are not automatically triggered during local development.\x1b[0m',
      '  To manually trigger a scheduled event, run:',
      '    curl "http://127.0.0.1:8787/cdn-cgi/handler/scheduled"',
      '  For more details, see \x1b[4mhttps://developers.cloudflare.com/workers/configuration/cron-triggers/#test-cron-triggers-locally\x1b[0m',
    ]) {
      expect(describeWranglerLine(routine)).toBeUndefined();
    }
    expect(describeWranglerLine('✘ [ERROR] something broke')).toBe('✘ [ERROR] something broke');
    expect(describeWranglerLine('[wrangler:warn] something odd')).toBe('[wrangler:warn] something odd');
    expect(
      describeWranglerLine(
        JSON.stringify({ level: 'warn', event: 'upstream_attempt_failed', time: 't', region: 'eu-west', problem: 'HTTP 503' }),
      ),
    ).toBe('warn upstream_attempt_failed region=eu-west problem=HTTP 503');
  });
});

describe("npm start's console lines for the local D1 migrations", () => {
  it('shows their errors and warnings only, not the banner, tables and prompts of a run that worked', () => {
    for (const routine of [
      ' ⛅️ wrangler 4.86.0 (update available 4.164.0)',
      'Resource location: local ',
      '│ 0001_usage_ledger.sql │ ✅     │',
      '? About to apply 1 migration(s)',
      '🤖 Using fallback value in non-interactive context: yes',
      '🚣 8 commands executed successfully.',
      '✅ No migrations to apply!',
    ]) {
      expect(describeMigrationsLine(routine)).toBeUndefined();
    }
    expect(describeMigrationsLine('✘ [ERROR] near "TABLE": syntax error')).toBe('✘ [ERROR] near "TABLE": syntax error');
    expect(describeMigrationsLine('▲ [WARNING] Processing wrangler.toml configuration')).toBe(
      '▲ [WARNING] Processing wrangler.toml configuration',
    );
  });
});
