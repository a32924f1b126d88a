-- The PostgreSQL schema as of SQLite migration 0007 (when this engine began). From here on each
-- SQLite migration NNNN has a PostgreSQL twin of the same number here, so schema versions mean
-- the same in both engines (tests/store/test_engines.py compares the two schemas).
-- delivery_events.rowid stands for SQLite's implicit rowid: history is ordered by (at, rowid).

CREATE TABLE apps (
    app_key     TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_enc  BYTEA NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL
, previous_secret_enc BYTEA, previous_until DOUBLE PRECISION);
CREATE TABLE devices (
    device_id   TEXT PRIMARY KEY,
    app_key     TEXT NOT NULL REFERENCES apps(app_key),
    install_id  TEXT NOT NULL,
    platform    TEXT NOT NULL,
    app_version TEXT,
    locale      TEXT,
    channel     TEXT,
    token_salt  BYTEA NOT NULL,
    token_hash  BYTEA NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL,
    last_seen   DOUBLE PRECISION,
    online      BIGINT NOT NULL DEFAULT 0, is_test BIGINT NOT NULL DEFAULT 0, broker_hash TEXT, timezone TEXT,
    UNIQUE (app_key, install_id)
);
CREATE TABLE messages (
    msg_id      TEXT PRIMARY KEY,
    app_key     TEXT NOT NULL REFERENCES apps(app_key),
    kind        TEXT NOT NULL,
    target      TEXT NOT NULL,
    envelope    BYTEA NOT NULL,
    policy      TEXT NOT NULL,
    biz_id      TEXT,
    created_at  DOUBLE PRECISION NOT NULL,
    start_at    DOUBLE PRECISION,
    expires_at  DOUBLE PRECISION NOT NULL
, fanout TEXT NOT NULL DEFAULT 'inbox', cleared_at DOUBLE PRECISION, state TEXT NOT NULL DEFAULT 'active', priority BIGINT NOT NULL DEFAULT 1, approved_by TEXT, approved_at DOUBLE PRECISION, next_run_at DOUBLE PRECISION, parent_msg_id TEXT);
CREATE INDEX messages_app ON messages (app_key, created_at);
CREATE TABLE deliveries (
    msg_id      TEXT NOT NULL REFERENCES messages(msg_id),
    device_id   TEXT NOT NULL,
    channel     TEXT NOT NULL DEFAULT 'mqtt',
    state       TEXT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    error       TEXT,
    updated_at  DOUBLE PRECISION NOT NULL, not_before DOUBLE PRECISION, repushes BIGINT NOT NULL DEFAULT 0, next_repush_at DOUBLE PRECISION,
    PRIMARY KEY (msg_id, device_id)
);
CREATE INDEX deliveries_pending ON deliveries (state) WHERE state IN ('accepted', 'queued', 'published');
CREATE TABLE delivery_events (
    rowid       BIGINT GENERATED ALWAYS AS IDENTITY,
    msg_id      TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    state       TEXT NOT NULL,
    at          DOUBLE PRECISION NOT NULL,
    detail      TEXT
);
CREATE INDEX delivery_events_msg ON delivery_events (msg_id, device_id);
CREATE TABLE nonces (
    app_key     TEXT NOT NULL,
    nonce       TEXT NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (app_key, nonce)
);
CREATE TABLE service_accounts (
    username     TEXT PRIMARY KEY,
    password_enc BYTEA NOT NULL,
    created_at   DOUBLE PRECISION NOT NULL
);
CREATE INDEX devices_app ON devices (app_key, device_id);
CREATE TABLE device_tags (
    device_id   TEXT NOT NULL REFERENCES devices(device_id),
    tag         TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (device_id, tag)
);
CREATE TABLE aliases (
    app_key     TEXT NOT NULL,
    alias_type  TEXT NOT NULL,
    alias       TEXT NOT NULL,
    device_id   TEXT NOT NULL REFERENCES devices(device_id),
    created_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (app_key, alias_type, alias, device_id)
);
CREATE INDEX aliases_device ON aliases (device_id);
CREATE TABLE files (
    file_id     TEXT PRIMARY KEY,
    app_key     TEXT NOT NULL REFERENCES apps(app_key),
    kind        TEXT NOT NULL,
    alias_type  TEXT,
    lines       BIGINT NOT NULL DEFAULT 0,
    state       TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL
);
CREATE TABLE file_lines (
    file_id     TEXT NOT NULL,
    line_no     BIGINT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (file_id, line_no)
);
CREATE TABLE tasks (
    task_id     TEXT PRIMARY KEY,
    app_key     TEXT NOT NULL REFERENCES apps(app_key),
    msg_id      TEXT NOT NULL REFERENCES messages(msg_id),
    kind        TEXT NOT NULL,
    state       TEXT NOT NULL,
    targeted    BIGINT NOT NULL DEFAULT 0,
    error       TEXT,
    created_at  DOUBLE PRECISION NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION
);
CREATE INDEX tasks_open ON tasks (state) WHERE state IN ('pending', 'running');
CREATE TABLE templates (
    app_key     TEXT NOT NULL REFERENCES apps(app_key),
    name        TEXT NOT NULL,
    template    TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (app_key, name)
);
CREATE INDEX deliveries_msg_state ON deliveries (msg_id, state);
CREATE UNIQUE INDEX messages_biz_id ON messages (app_key, biz_id) WHERE biz_id IS NOT NULL;
CREATE INDEX messages_due ON messages (next_run_at) WHERE state IN ('scheduled', 'approved');
CREATE INDEX deliveries_held ON deliveries (not_before) WHERE state = 'queued';
CREATE INDEX deliveries_repush ON deliveries (next_repush_at) WHERE next_repush_at IS NOT NULL;
CREATE INDEX deliveries_device ON deliveries (device_id, state);
CREATE INDEX delivery_events_device ON delivery_events (device_id, state, at);
CREATE TABLE app_settings (
    app_key     TEXT PRIMARY KEY REFERENCES apps(app_key),
    settings    TEXT NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL
);
CREATE TABLE vendor_credentials (
    app_key     TEXT NOT NULL REFERENCES apps(app_key),
    vendor      TEXT NOT NULL,
    config_enc  BYTEA NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (app_key, vendor)
);
CREATE TABLE vendor_alarms (
    app_key     TEXT NOT NULL,
    vendor      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at          DOUBLE PRECISION NOT NULL,
    count       BIGINT NOT NULL DEFAULT 1,
    PRIMARY KEY (app_key, vendor)
);
CREATE TABLE vendor_counters (
    app_key     TEXT NOT NULL,
    vendor      TEXT NOT NULL,
    forwarded   BIGINT NOT NULL DEFAULT 0,
    dropped_tokens BIGINT NOT NULL DEFAULT 0,
    failed      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (app_key, vendor)
);
CREATE TABLE vendor_tokens (
    device_id      TEXT NOT NULL REFERENCES devices(device_id),
    vendor         TEXT NOT NULL,
    token_hash     TEXT NOT NULL,
    token_enc      BYTEA NOT NULL,
    updated_at     DOUBLE PRECISION NOT NULL,
    last_used_at   DOUBLE PRECISION,
    removed_at     DOUBLE PRECISION,
    removed_reason TEXT,
    PRIMARY KEY (device_id, vendor, token_hash)
);
