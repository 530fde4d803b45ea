/**
 * The `edge` test project: edge/**, test/edge/** and shared/** tests run inside workerd through
 * @cloudflare/vitest-pool-workers, with the bindings from wrangler.toml (KV, Durable Objects, vars).
 */
import { fileURLToPath } from 'node:url';
import { cloudflareTest } from '@cloudflare/vitest-pool-workers';
import { defineConfig } from 'vitest/config';

const repositoryRoot = fileURLToPath(new URL('..', import.meta.url));

export default defineConfig({
  plugins: [
    cloudflareTest({
      wrangler: { configPath: `${repositoryRoot}wrangler.toml` },
      miniflare: {
        // Test-only secrets; real deployments set them with `wrangler secret put`.
        bindings: {
          SIROCCO_SIDECAR_SECRET: 'test-sidecar-secret',
          SIROCCO_ADMIN_SECRET: 'test-admin-secret',
          SIROCCO_KEY_PEPPER: 'test-key-pepper',
        },
      },
    }),
  ],
  test: {
    name: 'edge',
    root: repositoryRoot,
    // shared/ runs here too: the contract module must behave the same in workerd as in Node.
    include: ['edge/**/*.test.ts', 'test/edge/**/*.test.ts', 'shared/**/*.test.ts'],
    testTimeout: 30_000,
  },
});
