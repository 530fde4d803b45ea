import { describe, expect, it } from 'vitest';
import { LoadReportSchema } from './protocol.ts';

describe('LoadReportSchema', () => {
  const report = { ready: true, region: 'eu-west', models: ['mistral-tiny'], queueDepth: 0, activeSequences: 1, maxBatch: 8, maxQueue: 64, tokensPerSecond: 12.5 };

  it('accepts the sidecar /ready body', () => {
    expect(LoadReportSchema.parse(report)).toEqual(report);
  });

  it('rejects a body missing a field or with negative counts', () => {
    expect(LoadReportSchema.safeParse({ ...report, region: undefined }).success).toBe(false);
    expect(LoadReportSchema.safeParse({ ...report, queueDepth: -1 }).success).toBe(false);
  });
});
