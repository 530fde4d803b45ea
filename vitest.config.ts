import { defineConfig } from 'vitest/config';

/**
 * Two test projects: `node` (sidecar, shared, CLI, clients, end-to-end across real processes) and
 * `edge` (the worker inside workerd through @cloudflare/vitest-pool-workers; see edge/vitest.config.ts).
 */
export default defineConfig({
  test: {
    projects: [
      'edge/vitest.config.ts',
      {
        test: {
          name: 'node',
          environment: 'node',
          include: ['{sidecar,shared,cli,clients,scripts,bench,test}/**/*.test.ts'],
          exclude: ['test/edge/**', 'node_modules/**'],
          testTimeout: 60_000,
          hookTimeout: 120_000,
          // Two cores: onnxruntime sessions already use both, so run test files two at a time at most.
          maxWorkers: 2,
          // Run after the edge project rather than beside it: both are CPU-heavy on two cores.
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
