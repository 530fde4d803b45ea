/**
 * The sidecar's one error → HTTP mapping: every failure leaves as Mistral's flat error body with
 * the status its SidecarError carries, plus `Retry-After` / `retry-after-ms` (shared/errors.ts) on 429 and 503.
 * Used by `app.onError`, `app.notFound` and mid-stream error frames. The body carries the error's
 * `publicMessage` (no server paths); a server-side failure also names the request id, which is
 * what the operator finds the full message by in the sidecar's log.
 */
import type { Context } from 'hono';
import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import type * as z from 'zod';
import { errorBody, type MistralErrorBody, retryAfterHeaders, type ValidationDetail, validationErrorBody } from '../../shared/errors.ts';
import { SidecarError } from '../errors.ts';
import type { SidecarEnv } from './context.ts';

/** A body that parsed as JSON but does not match the schema: 422, Mistral style, with `detail[]`. */
export class RequestValidationError extends SidecarError {
  readonly detail: ValidationDetail[];

  constructor(error: z.ZodError) {
    const body = validationErrorBody(error);
    super('invalid_request_error', body.message, { status: 422, param: body.param });
    this.detail = body.detail ?? [];
  }
}

/** Any thrown value as a SidecarError; unknown errors become a 500 that does not leak internals. */
export function toSidecarError(error: unknown): SidecarError {
  if (error instanceof SidecarError) return error;
  if (error instanceof HTTPException && error.status === 413) {
    return new SidecarError('payload_too_large', 'the request body is larger than this sidecar accepts');
  }
  if (error instanceof HTTPException)
    return new SidecarError('invalid_request_error', error.message || 'bad request', { status: error.status });
  return new SidecarError('internal_error', 'internal error while serving the request', { cause: error });
}

export function errorBodyOf(error: SidecarError, requestId?: string): MistralErrorBody {
  // A bad checkpoint is the operator's problem, not the caller's: report it as an internal error.
  const serverSide = error.type === 'model_error' || error.type === 'internal_error';
  const type = serverSide ? 'internal_error' : error.type;
  const message = serverSide && requestId ? `${error.publicMessage} (request ${requestId})` : error.publicMessage;
  const body = errorBody(type, message, error.param, error.code);
  return error instanceof RequestValidationError ? { ...body, detail: error.detail } : body;
}

export function errorResponse(c: Context<SidecarEnv>, error: SidecarError): Response {
  if (error.retryAfterSeconds !== undefined) {
    for (const [name, value] of Object.entries(retryAfterHeaders(error.retryAfterSeconds))) c.header(name, value);
  }
  // The rest of an oversized body is never read: close the connection so no client reuses it.
  if (error.status === 413) c.header('connection', 'close');
  return c.json(errorBodyOf(error, c.get('requestId')), error.status as ContentfulStatusCode);
}
