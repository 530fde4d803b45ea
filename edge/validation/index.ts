/**
 * Request-body validation with the shared zod schemas. One parse per request, in this order:
 *   Content-Type      415 unless `application/json` (parameters such as `; charset=utf-8` allowed). A
 *                     request without Content-Type is read as JSON: raw HTTP clients often omit it, and
 *                     it cannot be confused with a form or text body (those always name their type).
 *   UTF-8             400 when the body is not valid UTF-8 (never silently replaced with U+FFFD).
 *   JSON              400 when malformed.
 *   shape             400 when nested deeper than MAX_JSON_DEPTH, or when a JSON schema the request
 *                     carries (response_format.json_schema.schema, tools[].function.parameters) has
 *                     more than MAX_SCHEMA_NODES values. Checked iteratively right after parsing, so
 *                     no later recursive walk (zod, the cache key, the sidecar) meets unbounded input.
 *   schema            422 with Mistral's "Extra inputs are not permitted"-style messages and `detail[]`.
 * Every failure is raised as EdgeError and rendered by app.onError.
 */
import type { Context } from 'hono';
import type * as z from 'zod';
import { validationErrorBody } from '../../shared/errors.ts';
import { EdgeError } from '../errors.ts';

/** Deepest nesting of objects and arrays a body may have (the body itself is level 1). */
export const MAX_JSON_DEPTH = 64;
/** Most values (objects, arrays and scalars) one JSON schema in a request may hold. */
export const MAX_SCHEMA_NODES = 10_000;

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false });

/** Whether a Content-Type header names JSON; parameters (charset) are allowed, absence is too. */
export function isJsonContentType(header: string | undefined): boolean {
  if (header === undefined || header.trim() === '') return true;
  const mediaType = header.split(';', 1)[0]?.trim().toLowerCase();
  return mediaType === 'application/json';
}

/**
 * How deep `value` nests (a scalar is 0, `{}` is 1), stopping as soon as `limit` is passed; and how
 * many values it holds, stopping past `nodeLimit`. Iterative: input depth never touches the stack.
 */
export function measureJson(value: unknown, limit: number, nodeLimit = Number.POSITIVE_INFINITY): { depth: number; nodes: number } {
  let depth = 0;
  let nodes = 0;
  const pending: Array<{ value: unknown; depth: number }> = [{ value, depth: 0 }];
  for (let next = pending.pop(); next !== undefined; next = pending.pop()) {
    nodes++;
    if (nodes > nodeLimit) break;
    if (next.value === null || typeof next.value !== 'object') continue;
    const level = next.depth + 1;
    if (level > depth) depth = level;
    if (depth > limit) break;
    const children: unknown[] = Array.isArray(next.value) ? next.value : Object.values(next.value);
    for (const child of children) pending.push({ value: child, depth: level });
  }
  return { depth, nodes };
}

function field(value: unknown, name: string): unknown {
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>)[name] : undefined;
}

/** The JSON schemas a chat request carries, with the parameter that names each. */
function embeddedSchemas(body: unknown): Array<{ param: string; schema: unknown }> {
  const schemas: Array<{ param: string; schema: unknown }> = [];
  const responseSchema = field(field(field(body, 'response_format'), 'json_schema'), 'schema');
  if (responseSchema !== undefined) schemas.push({ param: 'response_format', schema: responseSchema });
  const tools = field(body, 'tools');
  if (Array.isArray(tools)) {
    for (const tool of tools) {
      const parameters = field(field(tool, 'function'), 'parameters');
      if (parameters !== undefined) schemas.push({ param: 'tools', schema: parameters });
    }
  }
  return schemas;
}

/** Throws a 400 when a parsed body is too deep or carries an oversized schema. */
export function assertBoundedJson(body: unknown): void {
  if (measureJson(body, MAX_JSON_DEPTH).depth > MAX_JSON_DEPTH) {
    throw new EdgeError('invalid_request_error', `Request body is nested deeper than ${MAX_JSON_DEPTH} levels`);
  }
  for (const { param, schema } of embeddedSchemas(body)) {
    if (measureJson(schema, MAX_JSON_DEPTH, MAX_SCHEMA_NODES).nodes > MAX_SCHEMA_NODES) {
      throw new EdgeError('invalid_request_error', `JSON schema in ${param} has more than ${MAX_SCHEMA_NODES} values`, { param });
    }
  }
}

/** The body as text: 415 for a non-JSON Content-Type, 400 for bytes that are not UTF-8. */
export async function readJsonText(c: Context): Promise<string> {
  const contentType = c.req.header('content-type');
  if (!isJsonContentType(contentType)) {
    throw new EdgeError('invalid_request_error', `Unsupported Content-Type "${contentType}": send application/json`, { status: 415 });
  }
  const bytes = await c.req.arrayBuffer(); // the body limit's 413 comes from here
  try {
    return utf8.decode(bytes);
  } catch {
    throw new EdgeError('invalid_request_error', 'Request body is not valid UTF-8');
  }
}

export async function parseJsonBody<T>(c: Context, schema: z.ZodType<T>): Promise<T> {
  const text = await readJsonText(c);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new EdgeError('invalid_request_error', `Invalid JSON body: ${error instanceof Error ? error.message : String(error)}`);
  }
  assertBoundedJson(json);
  // reportInput lets the 422 tell a wrong type from a missing field.
  const result = schema.safeParse(json, { reportInput: true });
  if (!result.success) {
    const body = validationErrorBody(result.error);
    throw new EdgeError('invalid_request_error', body.message, { status: 422, param: body.param, detail: body.detail });
  }
  return result.data;
}
