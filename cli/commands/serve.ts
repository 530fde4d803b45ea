/**
 * `sirocco serve`: runs a sidecar (Mistral-compatible HTTP API with continuous batching) on the
 * given model folders, or on the two demo models. Logs are JSON lines on stdout; the first says
 * where it listens. SIGTERM/SIGINT shut it down gracefully and exit 0.
 */

import { createLogger } from '../../sidecar/server/logger.ts';
import { type RunningSidecar, startSidecar } from '../../sidecar/server/serve.ts';
import { loadServeConfig, SERVE_HELP } from '../serve-config.ts';

export const summary = 'run a sidecar: Mistral-compatible API over local models with continuous batching';

export async function run(argv: string[]): Promise<number> {
  const config = loadServeConfig(argv);
  if (!config) {
    console.log(SERVE_HELP);
    return 0;
  }
  const logger = createLogger();
  const stopped = new Promise<string>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  let sidecar: RunningSidecar;
  try {
    sidecar = await startSidecar(config, logger);
  } catch (error) {
    logger.error('startup failed', { error });
    throw error;
  }
  await sidecar.stop(await stopped);
  return 0;
}
