/**
 * Request counters for `GET /metrics` (Prometheus text format, guarded by the admin secret): requests by status,
 * model, region and cache status, and tokens by model and region, counted from each request's access-log fields.
 *
 * They live in the isolate's memory: each isolate counts only the requests it served and starts again from zero when
 * it is evicted, so on Cloudflare a scrape sees one isolate of many. That is what `wrangler dev` (one isolate) needs;
 * in production, write the same fields to a Workers Analytics Engine binding and query them with its SQL API.
 */
import type { LogFields } from '../logging/index.ts';

/** Distinct label sets kept per counter; beyond it new ones count under `other` (model names are the client's text). */
const MAX_SERIES = 1_000;
const OVERFLOW = 'other';

type Labels = Record<string, string>;

class Counter {
  private readonly series = new Map<string, { labels: Labels; value: number }>();

  constructor(
    readonly name: string,
    readonly help: string,
  ) {}

  add(labels: Labels, amount = 1): void {
    let key = JSON.stringify(labels);
    let entry = this.series.get(key);
    if (!entry && this.series.size >= MAX_SERIES) {
      const overflow = Object.fromEntries(Object.keys(labels).map((name) => [name, OVERFLOW]));
      key = JSON.stringify(overflow);
      entry = this.series.get(key);
      labels = overflow;
    }
    if (!entry) {
      entry = { labels, value: 0 };
      this.series.set(key, entry);
    }
    entry.value += amount;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    for (const { labels, value } of this.series.values()) {
      const rendered = Object.entries(labels)
        .map(([name, labelValue]) => `${name}="${escapeLabelValue(labelValue)}"`)
        .join(',');
      lines.push(`${this.name}{${rendered}} ${value}`);
    }
    return lines.join('\n');
  }
}

/** Prometheus label escaping: backslash, double quote and line feed. */
function escapeLabelValue(value: string): string {
  return value.replaceAll('\\', '\\\\').replaceAll('"', '\\"').replaceAll('\n', '\\n');
}

function label(value: LogFields[string]): string {
  return value === undefined || value === null ? '' : String(value);
}

export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

export class EdgeMetrics {
  private readonly requests = new Counter(
    'sirocco_edge_requests_total',
    'Requests served by this isolate, by status, model, region and cache status (in memory, per isolate).',
  );
  private readonly tokens = new Counter('sirocco_edge_tokens_total', 'Tokens in answers served by this isolate, by model and region.');

  /** Counts one request from its access-log fields. */
  record(fields: LogFields): void {
    const model = label(fields.model);
    const region = label(fields.region);
    this.requests.add({ status: label(fields.status), model, region, cache: label(fields.cache) });
    if (typeof fields.tokens === 'number' && fields.tokens > 0) this.tokens.add({ model, region }, fields.tokens);
  }

  render(): string {
    return `${this.requests.render()}\n${this.tokens.render()}\n`;
  }
}
