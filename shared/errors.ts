/**
 * Mistral's error body, shared by both tiers: `{"object":"error","message","type","param","code"}`
 * (the flat form the live API and @ai-sdk/mistral use). Validation failures are 422 with `message`
 * as a string (the AI SDK needs one) plus a pydantic-style top-level `detail[]`.
 */
import * as z from 'zod';

export interface ValidationDetail {
  /** Where the problem is, pydantic style: `['body', 'messages', 0, 'content']`. */
  loc: (string | number)[];
  msg: string;
  type: string;
}

export type MistralErrorBody = {
  object: 'error';
  message: string;
  type: string;
  param: string | null;
  code: string | null;
  detail?: ValidationDetail[];
};

/** Parses an error body received from a sidecar or upstream API (extra fields are kept). */
export const MistralErrorBodySchema = z.looseObject({
  object: z.literal('error'),
  message: z.string(),
  type: z.string(),
  param: z.string().nullable(),
  code: z.string().nullable(),
});

/**
 * The one error type → status table: Mistral's status for each error type used in this project.
 * Both tiers' error classes (EdgeError, SidecarError) take their default status from it.
 */
export const ERROR_STATUS = {
  invalid_request_error: 400,
  invalid_model: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  payload_too_large: 413,
  validation_error: 422,
  rate_limited: 429,
  internal_error: 500,
  /** A bad checkpoint or store on a sidecar; it reaches clients as `internal_error` (the operator's fault, not theirs). */
  model_error: 500,
  upstream_error: 502,
  overloaded: 503,
  timeout: 504,
} as const;
export type MistralErrorType = keyof typeof ERROR_STATUS;

/**
 * Mistral's codes where it sends one (bad model: 1500, rate limited: 1300), and this platform's own for a 429
 * that waiting a minute cannot lift: a key's or tenant's monthly spend or token cap.
 */
export const ERROR_CODES = {
  invalidModel: '1500',
  rateLimited: '1300',
  spendCapExceeded: 'spend_cap_exceeded',
  tokenCapExceeded: 'token_cap_exceeded',
} as const;

/** The longest wait a retry hint names: one rate-limit window. */
export const MAX_RETRY_AFTER_SECONDS = 60;

export type RetryAfterHeaders = { 'retry-after': string; 'retry-after-ms': string };

/**
 * The retry hint of a 429/503, for both tiers. Retry waits are counted in seconds across the project
 * (fractions allowed, so milliseconds survive); the wait is capped to 0…60 s and sent twice:
 * `Retry-After` in whole seconds rounded up (as HTTP defines it) and `retry-after-ms` (read first by
 * most clients, openai-node and the AI SDK among them).
 */
export function retryAfterHeaders(retryAfterSeconds: number): RetryAfterHeaders {
  const seconds = Number.isNaN(retryAfterSeconds) ? 0 : Math.min(MAX_RETRY_AFTER_SECONDS, Math.max(0, retryAfterSeconds));
  return { 'retry-after': String(Math.ceil(seconds)), 'retry-after-ms': String(Math.round(seconds * 1000)) };
}

export function errorBody(type: string, message: string, param: string | null = null, code: string | null = null): MistralErrorBody {
  return { object: 'error', message, type, param, code };
}

/**
 * Whether a field is absent rather than of the wrong type. Exact when the schema was run with
 * `{ reportInput: true }`; otherwise zod's message ("…, received undefined") tells.
 */
function isMissing(issue: z.core.$ZodIssue): boolean {
  return 'input' in issue ? issue.input === undefined : /received undefined$/.test(issue.message);
}

/** The pydantic name for each zod issue, so clients written against Mistral see familiar types. */
function detailFor(issue: z.core.$ZodIssue, path: (string | number)[]): ValidationDetail {
  if ((issue.code === 'invalid_type' || issue.code === 'invalid_union') && isMissing(issue)) {
    return { loc: path, msg: 'Field required', type: 'missing' };
  }
  switch (issue.code) {
    case 'invalid_type':
      return { loc: path, msg: issue.message, type: `${issue.expected}_type` };
    case 'too_big':
      return { loc: path, msg: issue.message, type: issue.inclusive === false ? 'less_than' : 'less_than_equal' };
    case 'too_small':
      return { loc: path, msg: issue.message, type: issue.inclusive === false ? 'greater_than' : 'greater_than_equal' };
    case 'invalid_value':
      return { loc: path, msg: issue.message, type: 'literal_error' };
    case 'invalid_union':
      return { loc: path, msg: issue.message, type: 'union_error' };
    default:
      return { loc: path, msg: issue.message, type: issue.code };
  }
}

function toDetails(error: z.ZodError): ValidationDetail[] {
  const details: ValidationDetail[] = [];
  for (const issue of error.issues) {
    const path = ['body', ...issue.path.map((key) => (typeof key === 'symbol' ? String(key) : key))];
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) details.push({ loc: [...path, key], msg: 'Extra inputs are not permitted', type: 'extra_forbidden' });
    } else {
      details.push(detailFor(issue, path));
    }
  }
  return details;
}

/** 422 body for a failed request schema: one readable sentence per problem plus `detail[]`. */
export function validationErrorBody(error: z.ZodError): MistralErrorBody {
  const detail = toDetails(error);
  const message = detail.map((entry) => `${entry.msg} (at ${entry.loc.join('.')})`).join('; ');
  const first = detail[0];
  const param = first && first.loc.length > 1 ? first.loc.slice(1).join('.') : null;
  return { ...errorBody('invalid_request_error', message || 'Invalid request body', param), detail };
}

/**
 * The data of a mid-stream error frame (`data: {"object":"error",…}`, then the stream closes with no
 * `[DONE]`). The nested `error` copy makes openai-node throw `APIError` instead of yielding the frame
 * as a chunk; Mistral's clients and the AI SDK fail the chunk schema and surface an error either way.
 */
export function streamErrorFrame(type: string, message: string, code: string | null = null) {
  return { ...errorBody(type, message, null, code), error: { message, type, code } };
}
