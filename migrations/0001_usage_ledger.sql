-- The usage ledger (D1 binding USAGE_DB, written by the queue consumer in edge/usage/consumer.ts).
-- Raw events are kept for USAGE_RETENTION_DAYS; the hourly and daily rollups per key × model are kept for good.
-- Amounts are integer micro-units of the price table's currency; times are UTC.

CREATE TABLE usage_events (
  -- One id per finished request, made by the edge when it emits the event: queue redelivery carries the same id,
  -- so inserting it twice is a no-op (request_id is the caller's x-request-id when it sent one, so not unique).
  event_id TEXT PRIMARY KEY,
  request_id TEXT NOT NULL,
  time_ms INTEGER NOT NULL,
  hour TEXT NOT NULL, -- e.g. 2026-12-03T13:00:00Z
  day TEXT NOT NULL, -- e.g. 2026-12-03
  key_id TEXT NOT NULL,
  tenant TEXT NOT NULL,
  model TEXT NOT NULL,
  region TEXT,
  prompt_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  cached INTEGER NOT NULL,
  status INTEGER NOT NULL,
  cost_micros INTEGER NOT NULL,
  -- 0 until the event's tokens and cost are added to the rollups (in the same transaction as its insert).
  rolled_up INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE INDEX usage_events_by_time ON usage_events (time_ms);
CREATE INDEX usage_events_by_key_time ON usage_events (key_id, time_ms);
CREATE INDEX usage_events_pending_rollup ON usage_events (rolled_up) WHERE rolled_up = 0;

CREATE TABLE usage_hourly (
  hour TEXT NOT NULL,
  day TEXT NOT NULL,
  key_id TEXT NOT NULL,
  tenant TEXT NOT NULL,
  model TEXT NOT NULL,
  requests INTEGER NOT NULL,
  prompt_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  cached_requests INTEGER NOT NULL,
  error_requests INTEGER NOT NULL,
  cost_micros INTEGER NOT NULL,
  PRIMARY KEY (hour, key_id, model)
) STRICT;

CREATE TABLE usage_daily (
  day TEXT NOT NULL,
  key_id TEXT NOT NULL,
  tenant TEXT NOT NULL,
  model TEXT NOT NULL,
  requests INTEGER NOT NULL,
  prompt_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  cached_requests INTEGER NOT NULL,
  error_requests INTEGER NOT NULL,
  cost_micros INTEGER NOT NULL,
  PRIMARY KEY (day, key_id, model)
) STRICT;

CREATE INDEX usage_daily_by_tenant ON usage_daily (tenant, day);
