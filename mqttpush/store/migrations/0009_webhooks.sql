-- 0009: webhooks to the app server (issue 17, docs/webhooks.md). An app registers up to 20
-- endpoints, each subscribed to some event types; its secret signs every POST and is sealed with
-- master.key like the app secrets. Events are written to the outbox in the same transaction as
-- what caused them (a delivery's history row, a dead vendor token, a finished task, an alarm),
-- so a crash loses none; the bridge's webhook sender posts them in batches and deletes them once
-- the endpoint answered 2xx. Rows it gave up on after 24 h stay, state 'failed'.
CREATE TABLE webhooks (
    webhook_id      TEXT PRIMARY KEY,
    app_key         TEXT NOT NULL REFERENCES apps(app_key),
    url             TEXT NOT NULL,
    events          TEXT NOT NULL,      -- JSON array of event types
    secret_enc      BLOB NOT NULL,      -- the signing secret, sealed
    created_at      REAL NOT NULL,
    last_success_at REAL,
    last_error      TEXT,
    last_error_at   REAL,
    failing_since   REAL                -- first failed POST since the last 2xx (NULL: healthy)
);
CREATE INDEX webhooks_app ON webhooks (app_key);

CREATE TABLE webhook_outbox (
    webhook_id      TEXT NOT NULL,
    event_id        TEXT NOT NULL,      -- time-ordered; the payload's "id" (one event, one id for every webhook)
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL,      -- the event's JSON object
    created_at      REAL NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending',  -- pending | failed (sent rows are deleted)
    batch_id        TEXT,               -- X-MQTTPush-Delivery once first sent: kept for retries
    attempts        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (webhook_id, event_id)
) WITHOUT ROWID;
-- Written with every event of a subscribed app: two b-trees per row (the table and the pending
-- index); the batch index holds only rows already sent once.
CREATE INDEX webhook_outbox_pending ON webhook_outbox (webhook_id, event_id) WHERE state = 'pending';
CREATE INDEX webhook_outbox_batch ON webhook_outbox (batch_id) WHERE batch_id IS NOT NULL;
