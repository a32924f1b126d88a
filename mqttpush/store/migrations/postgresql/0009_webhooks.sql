-- 0009: webhooks to the app server (issue 17): the PostgreSQL twin of ../0009_webhooks.sql.
CREATE TABLE webhooks (
    webhook_id      TEXT PRIMARY KEY,
    app_key         TEXT NOT NULL REFERENCES apps(app_key),
    url             TEXT NOT NULL,
    events          TEXT NOT NULL,
    secret_enc      BYTEA NOT NULL,
    created_at      DOUBLE PRECISION NOT NULL,
    last_success_at DOUBLE PRECISION,
    last_error      TEXT,
    last_error_at   DOUBLE PRECISION,
    failing_since   DOUBLE PRECISION
);
CREATE INDEX webhooks_app ON webhooks (app_key);

CREATE TABLE webhook_outbox (
    webhook_id      TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    created_at      DOUBLE PRECISION NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending',
    batch_id        TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (webhook_id, event_id)
);
CREATE INDEX webhook_outbox_pending ON webhook_outbox (webhook_id, event_id) WHERE state = 'pending';
CREATE INDEX webhook_outbox_batch ON webhook_outbox (batch_id) WHERE batch_id IS NOT NULL;
