/**
 * Where Sirocco keeps generated and converted models on this host. One place, so the CLI, the
 * sidecar and `npm start` agree: `$SIROCCO_HOME`, else `~/.cache/sirocco`.
 */
import { homedir } from 'node:os';
import { join } from 'node:path';

export function siroccoHome(): string {
  return process.env.SIROCCO_HOME || join(homedir(), '.cache', 'sirocco');
}

/** Converted stores made on demand from raw checkpoints, keyed by source hash and precision. */
export function storeCacheDir(): string {
  return join(siroccoHome(), 'stores');
}

/** The embedded demo models (generated deterministically, no download). */
export function demoModelsDir(): string {
  return join(siroccoHome(), 'demo');
}
