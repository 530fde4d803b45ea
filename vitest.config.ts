import { defineConfig } from 'vitest/config';

/**
 * Two test projects: `node` (sidecar, shared, CLI, clients, end-to-end across real processes) and
 * `edge` (the worker inside workerd through @cloudflare/vitest-pool-workers; see edge/vitest.config.ts).
 */
/** The tiers' structured log lines (one JSON object each): tests assert on them, readers need not see them. */
const STRUCTURED_LOG_LINE = /^\s*\{"(level|event|time)":/;

export default defineConfig({
  test: {
    // Quiet unless something fails; SIROCCO_TEST_LOGS=1 shows every log line.
    onConsoleLog: (log) => (process.env.SIROCCO_TEST_LOGS || !STRUCTURED_LOG_LINE.test(log) ? undefined : false),
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
