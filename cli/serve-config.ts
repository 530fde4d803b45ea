/**
 * The one configuration loader for `sirocco serve`: command-line flags first, then environment
 * variables, then defaults. Every bad value is a CliError naming the flag or variable.
 *
 * Flags: --model DIR[,DIR…] --host --port --region --device cpu|cuda --max-batch --max-queue
 *        --expert-cache-mb --threads
 * Environment: SIROCCO_SIDECAR_SECRET (HMAC secret; when set every request except the /health and /ready probes must
 *        be signed), SIROCCO_REGION, SIROCCO_MAX_BODY_BYTES, SIROCCO_REQUEST_TIMEOUT_MS,
 *        SIROCCO_SHUTDOWN_GRACE_MS, SIROCCO_PREFILL_CHUNK_TOKENS, SIROCCO_ADMISSION_WINDOW_MS.
 */

import { ENV } from '../shared/protocol.ts';
import { SERVE_DEFAULTS, type ServeConfig } from '../sidecar/server/config.ts';
import { CliError, parseCommandArgs, parseNumberOption } from './args.ts';
import { ENGINE_FLAGS, parseEngineFlags } from './engine-flags.ts';

export const SERVE_USAGE =
  'usage: sirocco serve [--model DIR[,DIR…]] [--host 127.0.0.1] [--port 8080] [--region local] [--device cpu|cuda] ' +
  '[--max-batch 16] [--max-queue 64] [--expert-cache-mb N] [--threads N]';

const FLAGS = {
  model: { type: 'string' },
  host: { type: 'string' },
  port: { type: 'string' },
  region: { type: 'string' },
  'max-batch': { type: 'string' },
  'max-queue': { type: 'string' },
  device: ENGINE_FLAGS.device,
  'expert-cache-mb': ENGINE_FLAGS['expert-cache-mb'],
  threads: ENGINE_FLAGS.threads,
  help: { type: 'boolean', short: 'h' },
} as const;

/** Returns null when --help was asked for. */
export function loadServeConfig(argv: string[], env: Record<string, string | undefined> = process.env): ServeConfig | null {
  const { values } = parseCommandArgs(argv, FLAGS);
  if (values.help) return null;

  const { device, expertCacheMb, threads } = parseEngineFlags(values);

  const modelDirs = (values.model ?? '')
    .split(',')
    .map((dir) => dir.trim())
    .filter((dir) => dir !== '');
  if (values.model !== undefined && modelDirs.length === 0) throw new CliError('--model needs at least one folder');

  const host = values.host ?? SERVE_DEFAULTS.host;
  if (host.trim() === '') throw new CliError('--host must not be empty');
  const region = values.region ?? env.SIROCCO_REGION ?? SERVE_DEFAULTS.region;
  if (!/^[\w.-]{1,64}$/.test(region)) throw new CliError(`--region must be 1-64 letters, digits, ".", "-" or "_", got "${region}"`);

  const secret = env[ENV.sidecarSecret];
  return {
    modelDirs,
    host,
    port: parseNumberOption(values.port, 'port', { integer: true, min: 0, max: 65535 }) ?? SERVE_DEFAULTS.port,
    region,
    device,
    maxBatch: parseNumberOption(values['max-batch'], 'max-batch', { integer: true, min: 1, max: 1024 }) ?? SERVE_DEFAULTS.maxBatch,
    maxQueue: parseNumberOption(values['max-queue'], 'max-queue', { integer: true, min: 0, max: 100_000 }) ?? SERVE_DEFAULTS.maxQueue,
    expertCacheMb,
    threads,
    sidecarSecret: secret ? secret : null,
    maxBodyBytes: envNumber(env, 'SIROCCO_MAX_BODY_BYTES', SERVE_DEFAULTS.maxBodyBytes, 1),
    requestTimeoutMs: envNumber(env, 'SIROCCO_REQUEST_TIMEOUT_MS', SERVE_DEFAULTS.requestTimeoutMs, 1),
    shutdownGraceMs: envNumber(env, 'SIROCCO_SHUTDOWN_GRACE_MS', SERVE_DEFAULTS.shutdownGraceMs, 0),
    prefillChunkTokens: envNumber(env, 'SIROCCO_PREFILL_CHUNK_TOKENS', SERVE_DEFAULTS.prefillChunkTokens, 1),
    admissionWindowMs: envNumber(env, 'SIROCCO_ADMISSION_WINDOW_MS', SERVE_DEFAULTS.admissionWindowMs, 0),
  };
}

function envNumber(env: Record<string, string | undefined>, name: string, fallback: number, min: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min) throw new CliError(`environment variable ${name} must be an integer ≥ ${min}, got "${raw}"`);
  return value;
}
