-- 0002: targeting (issue 4): test devices, tags, aliases, uploaded files, tasks, templates,
-- and the broker-side password hash a foreign broker (mosquitto) checks device tokens with.
ALTER TABLE devices ADD COLUMN is_test INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN broker_hash TEXT;
CREATE INDEX devices_app ON devices (app_key, device_id);

CREATE TABLE device_tags (
    device_id   TEXT NOT NULL REFERENCES devices(device_id),
    tag         TEXT NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (device_id, tag)
) WITHOUT ROWID;

CREATE TABLE aliases (
    app_key     TEXT NOT NULL,
    alias_type  TEXT NOT NULL,
    alias       TEXT NOT NULL,
    device_id   TEXT NOT NULL REFERENCES devices(device_id),
    created_at  REAL NOT NULL,
    PRIMARY KEY (app_key, alias_type, alias, device_id)
) WITHOUT ROWID;
CREATE INDEX aliases_device ON aliases (device_id);

CREATE TABLE files (
    file_id     TEXT PRIMARY KEY,
    app_key     TEXT NOT NULL REFERENCES apps(app_key),
    kind        TEXT NOT NULL,          -- devices | aliases
    alias_type  TEXT,
    lines       INTEGER NOT NULL DEFAULT 0,
    state       TEXT NOT NULL,          -- uploading | ready
    created_at  REAL NOT NULL
);

CREATE TABLE file_lines (
    file_id     TEXT NOT NULL,
    line_no     INTEGER NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (file_id, line_no)
) WITHOUT ROWID;

CREATE TABLE tasks (
    task_id     TEXT PRIMARY KEY,
    app_key     TEXT NOT NULL REFERENCES apps(app_key),
    msg_id      TEXT NOT NULL REFERENCES messages(msg_id),
    kind        TEXT NOT NULL,          -- tags | filter | file | broadcast
    state       TEXT NOT NULL,          -- pending | running | done | cancelled | failed
    targeted    INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX tasks_open ON tasks (state) WHERE state IN ('pending', 'running');

CREATE TABLE templates (
    app_key     TEXT NOT NULL REFERENCES apps(app_key),
    name        TEXT NOT NULL,
    template    TEXT NOT NULL,          -- JSON: {"notification": {...}, "data": {...}, "type": ...}
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (app_key, name)
);

CREATE INDEX deliveries_msg_state ON deliveries (msg_id, state);

-- How a message reaches devices: one publish per device inbox, or once on the app's broadcast topic.
ALTER TABLE messages ADD COLUMN fanout TEXT NOT NULL DEFAULT 'inbox';
-- When a broadcast's retained topic was cleared at its TTL.
ALTER TABLE messages ADD COLUMN cleared_at REAL;
