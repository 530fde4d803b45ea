/**
 * The edge tier's one error type. Middleware and handlers throw `EdgeError`; `app.onError` (edge/app.ts)
 * is the only place that turns it, or anything else, into Mistral's error body.
 */
import { ERROR_STATUS, type MistralErrorType, type ValidationDetail } from '../shared/errors.ts';

export interface EdgeErrorOptions {
  status?: number;
  param?: string | null;
  code?: string | null;
  /** Sent as Retry-After / retry-after-ms. */
  retryAfterMs?: number;
  detail?: ValidationDetail[];
  cause?: unknown;
}

export class EdgeError extends Error {
  readonly type: MistralErrorType;
  readonly status: number;
  readonly param: string | null;
  readonly code: string | null;
  readonly retryAfterMs: number | undefined;
  readonly detail: ValidationDetail[] | undefined;

  constructor(type: MistralErrorType, message: string, options: EdgeErrorOptions = {}) {
    super(message, { cause: options.cause });
    this.name = 'EdgeError';
    this.type = type;
    this.status = options.status ?? ERROR_STATUS[type];
    this.param = options.param ?? null;
    this.code = options.code ?? null;
    this.retryAfterMs = options.retryAfterMs;
    this.detail = options.detail;
  }

  static isInstance(value: unknown): value is EdgeError {
    return value instanceof Error && value.name === 'EdgeError';
  }
}
