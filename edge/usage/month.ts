/** The UTC months spend and token caps run over. */

/** `YYYY-MM` of a UTC time. */
export function monthOf(timeMs: number): string {
  return new Date(timeMs).toISOString().slice(0, 7);
}

/** The first instant of the UTC month after `timeMs`'s. */
export function nextMonthStartMs(timeMs: number): number {
  const date = new Date(timeMs);
  return Date.UTC(date.getUTCFullYear(), date.getUTCMonth() + 1, 1);
}
