/**
 * The usage routes' query parameters, validated with zod; a bad one is a 400 `invalid_request_error` naming it.
 * Days default to the current UTC month so far (from its first day to today).
 */
import type { Context } from 'hono';
import * as z from 'zod';
import { isCalendarDay, USAGE_DIMENSIONS, type UsageDimension } from '../../shared/usage.ts';
import type { AppEnv } from '../env.ts';
import { EdgeError } from '../errors.ts';
import type { EventsQuery, UsageQuery } from './query.ts';

export const MAX_EVENTS = 500;

const day = z.string().refine(isCalendarDay, 'must be a UTC day YYYY-MM-DD');
const keyId = z.string().regex(/^[0-9a-f]{16}$/, 'must be a key id (16 hex digits)');

function groupBy(allowed: readonly UsageDimension[], fallback: string) {
  return z
    .string()
    .default(fallback)
    .transform((raw, ctx) => {
      const names = raw.split(',').map((name) => name.trim());
      const dimensions: UsageDimension[] = [];
      for (const name of names) {
        if (!(allowed as readonly string[]).includes(name)) {
          ctx.addIssue({ code: 'custom', message: `"${name}" is not one of ${allowed.join(', ')}` });
          return z.NEVER;
        }
        if (!dimensions.includes(name as UsageDimension)) dimensions.push(name as UsageDimension);
      }
      return dimensions;
    });
}

function usageQuerySchema(allowed: readonly UsageDimension[], fallbackGroupBy: string) {
  return z.object({
    from: day.optional(),
    to: day.optional(),
    group_by: groupBy(allowed, fallbackGroupBy),
    key_id: keyId.optional(),
    tenant: z.string().min(1).max(128).optional(),
    model: z.string().min(1).max(128).optional(),
  });
}

const AdminUsageQuerySchema = usageQuerySchema(USAGE_DIMENSIONS, 'key,model');
/** A key's own usage: only its own rows, so grouping by key or tenant means nothing there. */
export const OWN_USAGE_DIMENSIONS = ['model', 'day', 'hour'] as const satisfies readonly UsageDimension[];
const OwnUsageQuerySchema = usageQuerySchema(OWN_USAGE_DIMENSIONS, 'model').pick({ from: true, to: true, group_by: true, model: true });

const EventsQuerySchema = z.object({
  limit: z.coerce.number().int().min(1).max(MAX_EVENTS).default(50),
  errors_only: z.enum(['true', 'false']).default('false'),
  key_id: keyId.optional(),
});

function parseQuery<T extends z.ZodType>(c: Context<AppEnv>, schema: T): z.output<T> {
  const parsed = schema.safeParse(c.req.query());
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  const param = issue ? String(issue.path[0] ?? '') : '';
  throw new EdgeError('invalid_request_error', `Invalid query parameter ${param}: ${issue?.message ?? 'invalid'}`, {
    param: param || null,
  });
}

/** The days of a report: `from`/`to` as given, else the current UTC month so far; `from` after `to` is a 400. */
function dayRange(from: string | undefined, to: string | undefined, now: number): { from: string; to: string } {
  const today = new Date(now).toISOString().slice(0, 10);
  const range = { from: from ?? `${today.slice(0, 7)}-01`, to: to ?? today };
  if (range.from > range.to) {
    throw new EdgeError('invalid_request_error', `Invalid query parameter from: ${range.from} is after to (${range.to})`, {
      param: 'from',
    });
  }
  return range;
}

export function adminUsageQuery(c: Context<AppEnv>, now = Date.now()): UsageQuery {
  const query = parseQuery(c, AdminUsageQuerySchema);
  return { ...dayRange(query.from, query.to, now), groupBy: query.group_by, keyId: query.key_id, tenant: query.tenant, model: query.model };
}

/** The caller's own usage: `group_by` key or tenant is refused (400 naming group_by). */
export function ownUsageQuery(c: Context<AppEnv>, keyId: string, now = Date.now()): UsageQuery {
  const query = parseQuery(c, OwnUsageQuerySchema);
  return { ...dayRange(query.from, query.to, now), groupBy: query.group_by, keyId, model: query.model };
}

export function eventsQuery(c: Context<AppEnv>, sinceMs: number): EventsQuery {
  const query = parseQuery(c, EventsQuerySchema);
  return { limit: query.limit, errorsOnly: query.errors_only === 'true', keyId: query.key_id, sinceMs };
}
