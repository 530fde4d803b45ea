/**
 * The sidecar tier's one error type. Engine, scheduler and server all throw `SidecarError`; the
 * server maps it to Mistral's error body in one place, and the CLI prints `message` alone, so
 * messages must name the file, tensor or field at fault.
 */
import { ERROR_STATUS, type MistralErrorType } from '../shared/errors.ts';

/** The error types a sidecar raises; their default statuses are shared/errors.ts's ERROR_STATUS. */
export type SidecarErrorType = Extract<
  MistralErrorType,
  | 'invalid_request_error' // 400: the request is malformed or out of range
  | 'invalid_model' // 400: unknown model name
  | 'unauthorized' // 401: missing, wrong or stale signature
  | 'payload_too_large' // 413
  | 'rate_limited' // 429
  | 'overloaded' // 503: admission queue full or shutting down
  | 'model_error' // 500: bad checkpoint/store: missing file, corrupt tensor, unsupported dtype…
  | 'internal_error' // 500
>;

export interface SidecarErrorOptions {
  status?: number;
  param?: string | null;
  code?: string | null;
  /** Seconds (fractions allowed, the project's one retry unit) a client should wait before retrying (429/503). */
  retryAfterSeconds?: number;
  cause?: unknown;
}

export class SidecarError extends Error {
  readonly type: SidecarErrorType;
  readonly status: number;
  readonly param: string | null;
  readonly code: string | null;
  readonly retryAfterSeconds: number | undefined;

  constructor(type: SidecarErrorType, message: string, options: SidecarErrorOptions = {}) {
    super(message, { cause: options.cause });
    this.name = 'SidecarError';
    this.type = type;
    this.status = options.status ?? ERROR_STATUS[type];
    this.param = options.param ?? null;
    this.code = options.code ?? null;
    this.retryAfterSeconds = options.retryAfterSeconds;
  }
}

/** A checkpoint, store or expert file is missing, corrupt or unsupported. */
export function modelError(message: string, cause?: unknown): SidecarError {
  return new SidecarError('model_error', message, { cause });
}

/** A caller supplied something out of range (tokens beyond the vocabulary, prompt too long…). */
export function invalidRequest(message: string, param: string | null = null): SidecarError {
  return new SidecarError('invalid_request_error', message, { param });
}
