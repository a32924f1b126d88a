-- 0003: delivery policy (issue 5): message lifecycle (draft, approval, schedule, recurrence,
-- cancel, recall), idempotency keys, priority, holds (quiet hours, caps, pacing), re-push,
-- per-app settings and device time zones.
ALTER TABLE messages ADD COLUMN state TEXT NOT NULL DEFAULT 'active';
-- draft -> approved -> scheduled -> active -> done; or cancelled / recalled. A series (recurring)
-- stays 'scheduled' and spawns one child message per occurrence.
ALTER TABLE messages ADD COLUMN priority INTEGER NOT NULL DEFAULT 1;   -- 0 high, 1 normal
ALTER TABLE messages ADD COLUMN approved_by TEXT;
ALTER TABLE messages ADD COLUMN approved_at REAL;
ALTER TABLE messages ADD COLUMN next_run_at REAL;
ALTER TABLE messages ADD COLUMN parent_msg_id TEXT;
CREATE UNIQUE INDEX messages_biz_id ON messages (app_key, biz_id) WHERE biz_id IS NOT NULL;
CREATE INDEX messages_due ON messages (next_run_at) WHERE state IN ('scheduled', 'approved');

ALTER TABLE deliveries ADD COLUMN not_before REAL;       -- held (quiet hours, cap, pacing) until then
ALTER TABLE deliveries ADD COLUMN repushes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN next_repush_at REAL;
CREATE INDEX deliveries_held ON deliveries (not_before) WHERE state = 'queued';
CREATE INDEX deliveries_repush ON deliveries (next_repush_at) WHERE next_repush_at IS NOT NULL;
CREATE INDEX deliveries_device ON deliveries (device_id, state);
CREATE INDEX delivery_events_device ON delivery_events (device_id, state, at);

ALTER TABLE devices ADD COLUMN timezone TEXT;

CREATE TABLE app_settings (
    app_key     TEXT PRIMARY KEY REFERENCES apps(app_key),
    settings    TEXT NOT NULL,          -- JSON: require_approval, quiet_hours, daily_cap, inbox_limit
    updated_at  REAL NOT NULL
);
