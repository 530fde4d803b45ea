/**
 * The usage API's shapes (`GET /admin/usage`, `/admin/usage/events`, `/v1/usage`) and the usage event the edge
 * queues for its ledger, shared by the edge (which answers them), the CLI (`sirocco usage`) and the console.
 * Amounts are integer micro-units of the price table's currency; times are ISO-8601 UTC; days are `YYYY-MM-DD`
 * (UTC, `to` inclusive).
 */
import * as z from 'zod';

/** What `group_by` may name, in the order rows are sorted by after their cost. */
export const USAGE_DIMENSIONS = ['key', 'tenant', 'model', 'day', 'hour'] as const;
export type UsageDimension = (typeof USAGE_DIMENSIONS)[number];

/** One finished chat request, as the edge queues it (`USAGE_QUEUE`) and the consumer stores it. */
export const UsageEventSchema = z.strictObject({
  /** Made once by the edge per event: redelivery carries the same id, so the ledger stores it once. */
  event_id: z.string().min(1).max(128),
  time: z.iso.datetime(),
  request_id: z.string().min(1).max(128),
  key_id: z.string().min(1),
  tenant: z.string().min(1),
  model: z.string().min(1),
  region: z.string().nullable(),
  prompt_tokens: z.number().int().nonnegative(),
  completion_tokens: z.number().int().nonnegative(),
  cached: z.boolean(),
  /** The HTTP status the client got; 499 a client that left, 502/504 a stream that failed after its start. */
  status: z.number().int().min(100).max(599),
  cost_micros: z.number().int().nonnegative(),
});
export type UsageEvent = z.infer<typeof UsageEventSchema>;

/** A raw event as `/admin/usage/events` lists it. */
export type UsageEventView = Omit<UsageEvent, 'event_id'>;
export const UsageEventViewSchema = UsageEventSchema.omit({ event_id: true });

/** One aggregated row; a dimension not grouped by is null (grouping by key also fills tenant). */
export const UsageRowSchema = z.object({
  key_id: z.string().nullable(),
  tenant: z.string().nullable(),
  model: z.string().nullable(),
  day: z.string().nullable(),
  hour: z.string().nullable(),
  requests: z.number().int(),
  prompt_tokens: z.number().int(),
  completion_tokens: z.number().int(),
  cached_requests: z.number().int(),
  error_requests: z.number().int(),
  cost_micros: z.number().int(),
});
export type UsageRow = z.infer<typeof UsageRowSchema>;

export const UsageReportSchema = z.object({
  object: z.literal('list'),
  from: z.string(),
  to: z.string(),
  group_by: z.array(z.enum(USAGE_DIMENSIONS)),
  currency: z.string(),
  data: z.array(UsageRowSchema),
});
export type UsageReport = z.infer<typeof UsageReportSchema>;

/** A UTC day, `YYYY-MM-DD`, that exists on the calendar (2026-02-30 does not). */
export function isCalendarDay(value: string): boolean {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(value)) return false;
  const parsed = new Date(`${value}T00:00:00Z`);
  return !Number.isNaN(parsed.getTime()) && parsed.toISOString().slice(0, 10) === value;
}

/** `micros` of `currency` as a decimal amount with all six places: 5000000 → "5.000000 EUR". */
export function formatMicros(micros: number, currency: string): string {
  const sign = micros < 0 ? '-' : '';
  const magnitude = Math.abs(micros);
  return `${sign}${Math.floor(magnitude / 1_000_000)}.${String(magnitude % 1_000_000).padStart(6, '0')} ${currency}`;
}
