-- 0008: app access tokens (issue 17): `Authorization: Bearer mpt_…` beside HMAC signing.
-- Only the token's SHA-256 is kept; `prefix` (e.g. "mpt_ab12…") tells tokens apart in listings.
CREATE TABLE app_tokens (
    token_id     TEXT PRIMARY KEY,
    app_key      TEXT NOT NULL REFERENCES apps(app_key),
    name         TEXT,
    scope        TEXT NOT NULL,          -- read | push | admin
    token_hash   BLOB NOT NULL UNIQUE,   -- SHA-256 of the whole token
    prefix       TEXT NOT NULL,
    created_at   REAL NOT NULL,
    expires_at   REAL,                   -- NULL: never
    last_used_at REAL,                   -- kept to the minute, not written per request
    revoked_at   REAL                    -- NULL: live
);

CREATE INDEX app_tokens_by_app ON app_tokens (app_key, created_at);
