/**
 * What one sidecar process runs with. `sirocco serve` builds it from flags, environment and these
 * defaults (cli/serve-config.ts); tests and `sirocco dev` may build it directly.
 */
import { DEFAULT_PORTS } from '../../shared/protocol.ts';
import type { Device } from '../engine/index.ts';

export interface ServeConfig {
  /** Model folders (converted stores or raw checkpoints); empty ⇒ the two demo models. */
  modelDirs: string[];
  host: string;
  /** 0 ⇒ a random free port (the listening log line reports the real one). */
  port: number;
  region: string;
  device: Device;
  maxBatch: number;
  maxQueue: number;
  /**
   * Expert-cache budget for MoE models, in MiB (fractional allowed), or 'auto' for the engine to size
   * it from the memory available at load; undefined ⇒ all resident.
   */
  expertCacheMb: number | 'auto' | undefined;
  /**
   * KV memory reserved (allocated and faulted in) at load per model, in MiB, or 'auto': room for
   * `maxBatch` sequences of 256 tokens, at most 1 GiB. 0 ⇒ none; caches are allocated as they grow.
   */
  kvCacheMb: number | 'auto';
  /** Intra-op threads per onnxruntime session; undefined ⇒ the engine's default. */
  threads: number | undefined;
  /** HMAC secret shared with the edge; null ⇒ requests are not signed. */
  sidecarSecret: string | null;
  /** Bearer token that opens /metrics to a Prometheus scraper without a signature; null ⇒ none. */
  metricsToken: string | null;
  maxBodyBytes: number;
  requestTimeoutMs: number;
  shutdownGraceMs: number;
  prefillChunkTokens: number;
  /** How long an idle scheduler waits for companions before its first step, so a burst starts together. */
  admissionWindowMs: number;
}

export const SERVE_DEFAULTS = {
  host: '127.0.0.1',
  port: DEFAULT_PORTS.sidecar,
  region: 'local',
  device: 'cpu' as Device,
  maxBatch: 16,
  maxQueue: 64,
  maxBodyBytes: 1024 * 1024,
  requestTimeoutMs: 300_000,
  shutdownGraceMs: 10_000,
  prefillChunkTokens: 64,
  admissionWindowMs: 20,
};

/**
 * The demo models' `max_tokens` when a request leaves it unset: their random weights seldom write
 * an end-of-sequence token, so an unbounded answer would fill the whole 8k context (tens of seconds).
 */
export const DEMO_DEFAULT_MAX_TOKENS = 256;
