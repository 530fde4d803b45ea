/**
 * The one configuration loader for `sirocco serve`: command-line flags first, then environment
 * variables, then defaults. Every bad value is a CliError naming the flag or variable.
 *
 * Flags: --model DIR[,DIR…]|demo|demo-small --host --port --region --device cpu|cuda --max-batch
 *        --max-queue --expert-cache-mb N|auto --kv-cache-mb N|auto --threads
 * Environment: SIROCCO_SIDECAR_SECRET (HMAC secret; when set every request except the /health and /ready probes must
 *        be signed), SIROCCO_REGION, SIROCCO_MAX_BODY_BYTES, SIROCCO_REQUEST_TIMEOUT_MS,
 *        SIROCCO_SHUTDOWN_GRACE_MS, SIROCCO_PREFILL_CHUNK_TOKENS, SIROCCO_ADMISSION_WINDOW_MS.
 */

import { ENV } from '../shared/protocol.ts';
import { DEMO_DEFAULT_MAX_TOKENS, SERVE_DEFAULTS, type ServeConfig } from '../sidecar/server/config.ts';
import { CliError, describeRange, parseCommandArgs, parseNumberOption } from './args.ts';
import { ENGINE_FLAGS, ENGINE_FLAGS_HELP, parseEngineFlags, parseMbOrAuto } from './engine-flags.ts';

/** Ranges shared by the parser and the help text. */
const PORT_RANGE = { integer: true, min: 0, max: 65535 };
const MAX_BATCH_RANGE = { integer: true, min: 1, max: 1024 };
const MAX_QUEUE_RANGE = { integer: true, min: 0, max: 100_000 };

export const SERVE_HELP = `usage: sirocco serve [options]

Runs a sidecar: the Mistral chat API over local models with continuous batching. Logs are JSON lines
on stdout; SIGTERM or SIGINT shuts it down gracefully.

  --model DIR[,DIR…]    checkpoint folders, GGUF files or converted stores, one per model id; "demo" = the built-in
                        tiny Mistral, "demo-small" = the tiny Mixtral (default: both demo models).
                        The demo models have random weights (nonsense text); on them an unset
                        max_tokens is ${DEMO_DEFAULT_MAX_TOKENS}.
  --host HOST           address to listen on (default ${SERVE_DEFAULTS.host})
  --port N              port, ${describeRange(PORT_RANGE)}; 0 picks a free one (default ${SERVE_DEFAULTS.port})
  --region NAME         region name reported to the edge (default $SIROCCO_REGION, else ${SERVE_DEFAULTS.region})
  --max-batch N         requests decoded together, ${describeRange(MAX_BATCH_RANGE)} (default ${SERVE_DEFAULTS.maxBatch})
  --max-queue N         requests waiting for a batch slot before a 503, ${describeRange(MAX_QUEUE_RANGE)} (default ${SERVE_DEFAULTS.maxQueue})
  --kv-cache-mb N|auto  KV cache memory each model allocates and faults in at load, in MiB (0: none; caches
                        are then allocated as they grow, and on fresh memory a step that grows many
                        of them stalls). auto: room for --max-batch sequences of 256 tokens, at most
                        1 GiB (default auto)
${ENGINE_FLAGS_HELP}
  -h, --help            this help

environment:
  ${ENV.sidecarSecret}        HMAC secret; when set, every request except /health and /ready must be signed
  ${ENV.metricsToken}         bearer token that also opens /metrics, for a Prometheus scraper
  SIROCCO_MAX_BODY_BYTES        largest request body (default ${SERVE_DEFAULTS.maxBodyBytes})
  SIROCCO_REQUEST_TIMEOUT_MS    longest request (default ${SERVE_DEFAULTS.requestTimeoutMs})
  SIROCCO_SHUTDOWN_GRACE_MS     time in-flight requests get on shutdown (default ${SERVE_DEFAULTS.shutdownGraceMs})
  SIROCCO_PREFILL_CHUNK_TOKENS  prompt tokens per prefill step (default ${SERVE_DEFAULTS.prefillChunkTokens})
  SIROCCO_ADMISSION_WINDOW_MS   wait to gather new requests into one prefill (default ${SERVE_DEFAULTS.admissionWindowMs})

examples:
  sirocco serve                                  # both demo models on http://127.0.0.1:${SERVE_DEFAULTS.port}
  sirocco serve --model demo --port 8081 --region eu-west
  sirocco serve --model ./Mistral-7B-v0.1,./Mixtral-8x7B-v0.1 --expert-cache-mb 8192
  sirocco serve --model ./stores/mixtral-int4 --expert-cache-mb auto`;

const FLAGS = {
  model: { type: 'string' },
  host: { type: 'string' },
  port: { type: 'string' },
  region: { type: 'string' },
  'max-batch': { type: 'string' },
  'max-queue': { type: 'string' },
  device: ENGINE_FLAGS.device,
  'expert-cache-mb': ENGINE_FLAGS['expert-cache-mb'],
  'kv-cache-mb': { type: 'string' },
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
    port: parseNumberOption(values.port, 'port', PORT_RANGE) ?? SERVE_DEFAULTS.port,
    region,
    device,
    maxBatch: parseNumberOption(values['max-batch'], 'max-batch', MAX_BATCH_RANGE) ?? SERVE_DEFAULTS.maxBatch,
    maxQueue: parseNumberOption(values['max-queue'], 'max-queue', MAX_QUEUE_RANGE) ?? SERVE_DEFAULTS.maxQueue,
    // Mixtral's block experts fill what memory allows unless told otherwise.
    expertCacheMb: expertCacheMb ?? 'auto',
    kvCacheMb: parseMbOrAuto(values['kv-cache-mb'], 'kv-cache-mb', { allowZero: true }) ?? 'auto',
    threads,
    sidecarSecret: secret ? secret : null,
    metricsToken: env[ENV.metricsToken] || null,
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
  if (!Number.isInteger(value) || value < min)
    throw new CliError(`environment variable ${name} must be ${describeRange({ integer: true, min })}, got "${raw}"`);
  return value;
}
