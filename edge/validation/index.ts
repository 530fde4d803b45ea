/**
 * Request-body validation with the shared zod schemas. One parse per request: malformed JSON is a
 * 400 and a schema failure a 422 with Mistral's "Extra inputs are not permitted"-style messages
 * and `detail[]`, both raised as EdgeError.
 */
import type { Context } from 'hono';
import type * as z from 'zod';
import { validationErrorBody } from '../../shared/errors.ts';
import { EdgeError } from '../errors.ts';

export async function parseJsonBody<T>(c: Context, schema: z.ZodType<T>): Promise<T> {
  const text = await c.req.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new EdgeError('invalid_request_error', `Invalid JSON body: ${error instanceof Error ? error.message : String(error)}`);
  }
  // reportInput lets the 422 tell a wrong type from a missing field.
  const result = schema.safeParse(json, { reportInput: true });
  if (!result.success) {
    const body = validationErrorBody(result.error);
    throw new EdgeError('invalid_request_error', body.message, { status: 422, param: body.param, detail: body.detail });
  }
  return result.data;
}
