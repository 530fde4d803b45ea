import { env } from 'cloudflare:workers';
import { describe, expect, it } from 'vitest';
import { corsOriginsFrom, DEFAULT_TUNABLES, sidecarsFrom, tunablesFrom, upstreamsFrom } from '../../edge/config/index.ts';
import { setup } from './harness.ts';

const base = { ...env, SIDECARS: undefined, UPSTREAMS: undefined, CORS_ORIGINS: undefined };

describe('edge configuration', () => {
  it('parses the wrangler.toml registry and defaults', () => {
    const sidecars = sidecarsFrom({
      ...base,
      SIDECARS: '[{"region":"eu","url":"http://127.0.0.1:8081","models":["mistral-tiny"],"lat":1,"lon":2}]',
    });
    expect(sidecars).toEqual([{ region: 'eu', url: 'http://127.0.0.1:8081', models: ['mistral-tiny'], lat: 1, lon: 2 }]);
    expect(upstreamsFrom(base)).toEqual({});
    expect(tunablesFrom(base)).toEqual(DEFAULT_TUNABLES);
    expect(corsOriginsFrom({ ...base, CORS_ORIGINS: ' https://a.example , https://b.example ' })).toEqual([
      'https://a.example',
      'https://b.example',
    ]);
    expect(corsOriginsFrom({ ...base, CORS_ORIGINS: '*' })).toBe('*');
  });

  it.each([
    ['not JSON', 'SIDECARS', '[{', /SIDECARS: not valid JSON/],
    ['an unknown model', 'SIDECARS', '[{"region":"eu","url":"http://x","models":["gpt-4"]}]', /SIDECARS:.*models/],
    [
      'a duplicate region',
      'SIDECARS',
      '[{"region":"eu","url":"http://x","models":["mistral-tiny"]},{"region":"eu","url":"http://y","models":["mistral-tiny"]}]',
      /duplicate region "eu"/,
    ],
    ['an upstream without its secret name', 'UPSTREAMS', '{"mistral-medium":{"url":"https://api.mistral.ai"}}', /UPSTREAMS:.*apiKeySecret/],
    ['a non-numeric timeout', 'FIRST_BYTE_TIMEOUT_MS', 'soon', /FIRST_BYTE_TIMEOUT_MS: must be a positive integer, got "soon"/],
  ])('answers a deployment with %s by a 500 naming the variable', async (_name, variable, value, message) => {
    const edge = setup({ [variable]: value });
    const key = await edge.apiKey();
    const response = await edge.chat(key, {});
    expect(response.status).toBe(500);
    expect(await response.json()).toMatchObject({ object: 'error', type: 'internal_error', message: expect.stringMatching(message) });
  });
});
