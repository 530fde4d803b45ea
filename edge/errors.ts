/**
 * The edge tier's one error type. Middleware and handlers throw `EdgeError`; `app.onError` (edge/app.ts)
 * is the only place that turns it, or anything else, into Mistral's error body.
 */
import { ERROR_STATUS, type MistralErrorType, type ValidationDetail } from '../shared/errors.ts';

/** The error types the edge raises: all of shared/errors.ts's table but `model_error` (the edge loads no models). */
export type EdgeErrorType = Exclude<MistralErrorType, 'model_error'>;

export interface EdgeErrorOptions {
  /** Defaults to shared/errors.ts's ERROR_STATUS for the type. */
  status?: number;
  param?: string | null;
  code?: string | null;
  /** Seconds (fractions allowed, the project's one retry unit); sent as Retry-After / retry-after-ms. */
  retryAfterSeconds?: number;
  /** Extra response headers the error must carry (the rate limiter's x-ratelimit-*). */
  headers?: Record<string, string>;
  detail?: ValidationDetail[];
  cause?: unknown;
}

export class EdgeError extends Error {
  readonly type: EdgeErrorType;
  readonly status: number;
  readonly param: string | null;
  readonly code: string | null;
  readonly retryAfterSeconds: number | undefined;
  readonly headers: Readonly<Record<string, string>>;
  readonly detail: ValidationDetail[] | undefined;

  constructor(type: EdgeErrorType, message: string, options: EdgeErrorOptions = {}) {
    super(message, { cause: options.cause });
    this.name = 'EdgeError';
    this.type = type;
    this.status = options.status ?? ERROR_STATUS[type];
    this.param = options.param ?? null;
    this.code = options.code ?? null;
    this.retryAfterSeconds = options.retryAfterSeconds;
    this.headers = { ...options.headers };
    this.detail = options.detail;
  }

  static isInstance(value: unknown): value is EdgeError {
    return value instanceof Error && value.name === 'EdgeError';
  }
}
