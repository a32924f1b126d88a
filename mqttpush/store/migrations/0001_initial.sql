-- 0001: apps, devices, messages, deliveries with their timestamped history, nonces, service accounts.
CREATE TABLE apps (
    app_key     TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_enc  BLOB NOT NULL,          -- AES-GCM sealed with the data dir's master key
    created_at  REAL NOT NULL
);

CREATE TABLE devices (
    device_id   TEXT PRIMARY KEY,
    app_key     TEXT NOT NULL REFERENCES apps(app_key),
    install_id  TEXT NOT NULL,
    platform    TEXT NOT NULL,
    app_version TEXT,
    locale      TEXT,
    channel     TEXT,
    token_salt  BLOB NOT NULL,
    token_hash  BLOB NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    last_seen   REAL,
    online      INTEGER NOT NULL DEFAULT 0,
    UNIQUE (app_key, install_id)
);

CREATE TABLE messages (
    msg_id      TEXT PRIMARY KEY,
    app_key     TEXT NOT NULL REFERENCES apps(app_key),
    kind        TEXT NOT NULL,          -- devices | alias | tags | filter | file | broadcast
    target      TEXT NOT NULL,          -- JSON, as requested
    envelope    BLOB NOT NULL,          -- the exact bytes devices receive
    policy      TEXT NOT NULL,          -- JSON
    biz_id      TEXT,
    created_at  REAL NOT NULL,
    start_at    REAL,
    expires_at  REAL NOT NULL
);
CREATE INDEX messages_app ON messages (app_key, created_at);

CREATE TABLE deliveries (
    msg_id      TEXT NOT NULL REFERENCES messages(msg_id),
    device_id   TEXT NOT NULL,
    channel     TEXT NOT NULL DEFAULT 'mqtt',
    state       TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (msg_id, device_id)
) WITHOUT ROWID;
CREATE INDEX deliveries_pending ON deliveries (state) WHERE state IN ('accepted', 'queued', 'published');

CREATE TABLE delivery_events (
    msg_id      TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    state       TEXT NOT NULL,
    at          REAL NOT NULL,
    detail      TEXT
);
CREATE INDEX delivery_events_msg ON delivery_events (msg_id, device_id);

CREATE TABLE nonces (
    app_key     TEXT NOT NULL,
    nonce       TEXT NOT NULL,
    expires_at  REAL NOT NULL,
    PRIMARY KEY (app_key, nonce)
) WITHOUT ROWID;

CREATE TABLE service_accounts (
    username     TEXT PRIMARY KEY,
    password_enc BLOB NOT NULL,
    created_at   REAL NOT NULL
);
