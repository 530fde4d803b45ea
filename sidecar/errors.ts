/**
 * The sidecar tier's one error type. Engine, scheduler and server all throw `SidecarError`; the
 * server maps it to Mistral's error body in one place, and the CLI prints `message` alone, so
 * messages must name the file, tensor or field at fault. HTTP clients get `publicMessage` instead:
 * server-side failures (5xx) never show them the server's file-system paths, which stay in
 * `message` for the operator's terminal and the sidecar's log.
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
  /** What an HTTP client is told; defaults to `message`, with absolute paths cut to their last part for 5xx errors. */
  publicMessage?: string;
}

export class SidecarError extends Error {
  readonly type: SidecarErrorType;
  readonly status: number;
  readonly param: string | null;
  readonly code: string | null;
  readonly retryAfterSeconds: number | undefined;
  readonly publicMessage: string;

  constructor(type: SidecarErrorType, message: string, options: SidecarErrorOptions = {}) {
    super(message, { cause: options.cause });
    this.name = 'SidecarError';
    this.type = type;
    this.status = options.status ?? ERROR_STATUS[type];
    this.param = options.param ?? null;
    this.code = options.code ?? null;
    this.retryAfterSeconds = options.retryAfterSeconds;
    this.publicMessage = options.publicMessage ?? (this.status >= 500 ? withoutPaths(message) : message);
  }
}

/**
 * An absolute POSIX path (at least two segments, not inside a word or URL): what a server-side
 * message must not show a client. Request-side (4xx) messages are left alone: they quote the
 * request, whose URL paths look the same.
 */
const ABSOLUTE_PATH = /(?<![\w.~:/-])\/(?:[^\s/:'"`,;()[\]{}]+\/)+([^\s/:'"`,;()[\]{}]*)/g;

/** `text` with every absolute path replaced by its last segment (a file name says enough). */
export function withoutPaths(text: string): string {
  return text.replace(ABSOLUTE_PATH, (_path, last: string) => last || '<folder>');
}

/** A checkpoint, store or expert file is missing, corrupt or unsupported. */
export function modelError(message: string, cause?: unknown): SidecarError {
  return new SidecarError('model_error', message, { cause });
}

/** A caller supplied something out of range (tokens beyond the vocabulary, prompt too long…). */
export function invalidRequest(message: string, param: string | null = null): SidecarError {
  return new SidecarError('invalid_request_error', message, { param });
}
