import { describe, expect, it } from 'vitest';
import { isValidRequestId, LoadReportSchema, newRequestId, requestIdFrom } from './protocol.ts';

describe('LoadReportSchema', () => {
  const report = {
    ready: true,
    region: 'eu-west',
    models: ['mistral-tiny'],
    queueDepth: 0,
    activeSequences: 1,
    maxBatch: 8,
    maxQueue: 64,
    tokensPerSecond: 12.5,
  };

  it('accepts the sidecar /ready body', () => {
    expect(LoadReportSchema.parse(report)).toEqual(report);
  });

  it('rejects a body missing a field or with negative counts', () => {
    expect(LoadReportSchema.safeParse({ ...report, region: undefined }).success).toBe(false);
    expect(LoadReportSchema.safeParse({ ...report, queueDepth: -1 }).success).toBe(false);
  });
});

describe('request ids', () => {
  it('accepts 8–128 letters, digits and . _ : - (an edge id such as req.2026:abc)', () => {
    for (const id of ['req.2026:abc', 'abcdefgh', 'a'.repeat(128), '4ba080a3-7600-4454-ab52-1f13cb291184', 'trace_01:span.02-x']) {
      expect(isValidRequestId(id)).toBe(true);
    }
  });

  it('rejects ids too short, too long, or with characters that could forge log fields', () => {
    for (const id of ['', 'abc', 'a'.repeat(129), 'bad id "level":"error"', 'req=2026+abc', 'line\nbreak-id', 'ünïcödé-id']) {
      expect(isValidRequestId(id)).toBe(false);
    }
  });

  it('generates fresh ids in the format', () => {
    const ids = Array.from({ length: 20 }, () => newRequestId());
    for (const id of ids) expect(isValidRequestId(id)).toBe(true);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('keeps a valid incoming id and replaces anything else', () => {
    expect(requestIdFrom('req.2026:abc')).toBe('req.2026:abc');
    for (const incoming of [undefined, null, '', 'abc', 'bad id']) {
      const id = requestIdFrom(incoming);
      expect(id).not.toBe(incoming);
      expect(isValidRequestId(id)).toBe(true);
    }
  });
});
