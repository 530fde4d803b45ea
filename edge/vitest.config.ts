/**
 * The `edge` test project: edge/**, test/edge/** and shared/** tests run inside workerd through
 * @cloudflare/vitest-pool-workers, with the bindings from wrangler.toml (KV, Durable Objects, vars).
 */
import { fileURLToPath } from 'node:url';
import { cloudflareTest, readD1Migrations } from '@cloudflare/vitest-pool-workers';
import { defineConfig } from 'vitest/config';

const repositoryRoot = fileURLToPath(new URL('..', import.meta.url));

export default defineConfig({
  plugins: [
    cloudflareTest(async () => ({
      wrangler: { configPath: `${repositoryRoot}wrangler.toml` },
      miniflare: {
        // Test-only secrets; real deployments set them with `wrangler secret put`.
        bindings: {
          SIROCCO_SIDECAR_SECRET: 'test-sidecar-secret',
          SIROCCO_ADMIN_SECRET: 'test-admin-secret',
          SIROCCO_KEY_PEPPER: 'test-key-pepper',
          // The ledger's D1 migrations (read here, in Node), for applyD1Migrations in the usage tests.
          TEST_MIGRATIONS: await readD1Migrations(`${repositoryRoot}migrations`),
        },
      },
    })),
  ],
  test: {
    name: 'edge',
    root: repositoryRoot,
    // shared/ runs here too: the contract module must behave the same in workerd as in Node.
    include: ['edge/**/*.test.ts', 'test/edge/**/*.test.ts', 'shared/**/*.test.ts'],
    testTimeout: 30_000,
  },
});
