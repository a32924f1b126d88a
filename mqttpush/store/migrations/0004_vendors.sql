-- 0004: vendor channels (issue 6): device vendor tokens, per-app vendor credentials, alarms.
CREATE TABLE vendor_tokens (
    device_id   TEXT NOT NULL REFERENCES devices(device_id),
    vendor      TEXT NOT NULL,          -- apns | fcm | hms | mipush | webpush
    token       TEXT NOT NULL,          -- webpush: the subscription JSON
    updated_at  REAL NOT NULL,
    PRIMARY KEY (device_id, vendor, token)
) WITHOUT ROWID;

CREATE TABLE vendor_credentials (
    app_key     TEXT NOT NULL REFERENCES apps(app_key),
    vendor      TEXT NOT NULL,
    config_enc  BLOB NOT NULL,          -- sealed JSON, key files inlined
    updated_at  REAL NOT NULL,
    PRIMARY KEY (app_key, vendor)
);

CREATE TABLE vendor_alarms (
    app_key     TEXT NOT NULL,
    vendor      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at          REAL NOT NULL,
    count       INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (app_key, vendor)
);

CREATE TABLE vendor_counters (
    app_key     TEXT NOT NULL,
    vendor      TEXT NOT NULL,
    forwarded   INTEGER NOT NULL DEFAULT 0,
    dropped_tokens INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app_key, vendor)
);
