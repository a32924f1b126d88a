-- 0010: push endpoints of the UnifiedPush / Web Push distributor (issue 17, docs/webpush.md).
-- An endpoint is the URL /up/<endpoint_id> a device hands to one of its apps' servers; the id is
-- 160 random bits (base64url), the only secret a sender needs. A removed endpoint is kept
-- (removed_at) so that senders learn 410 Gone rather than 404.
CREATE TABLE push_endpoints (
    endpoint_id TEXT PRIMARY KEY,
    app_key     TEXT NOT NULL REFERENCES apps(app_key),
    device_id   TEXT NOT NULL REFERENCES devices(device_id),
    instance    TEXT NOT NULL,          -- the app's own name for it (UnifiedPush instance/token)
    vapid_key   TEXT,                   -- the application server's VAPID key it is restricted to
    created_at  REAL NOT NULL,
    removed_at  REAL
);
CREATE UNIQUE INDEX push_endpoints_instance ON push_endpoints (device_id, instance) WHERE removed_at IS NULL;

-- The messages sent to each endpoint, with their Topic: a new message with the same topic
-- replaces one still waiting (RFC 8030 section 5.4).
CREATE TABLE push_endpoint_messages (
    msg_id      TEXT PRIMARY KEY REFERENCES messages(msg_id),
    endpoint_id TEXT NOT NULL REFERENCES push_endpoints(endpoint_id),
    topic       TEXT
);
CREATE INDEX push_endpoint_messages_topic ON push_endpoint_messages (endpoint_id, topic);
