-- 0008: app access tokens (issue 17): the PostgreSQL twin of ../0008_app_tokens.sql.
CREATE TABLE app_tokens (
    token_id     TEXT PRIMARY KEY,
    app_key      TEXT NOT NULL REFERENCES apps(app_key),
    name         TEXT,
    scope        TEXT NOT NULL,
    token_hash   BYTEA NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    created_at   DOUBLE PRECISION NOT NULL,
    expires_at   DOUBLE PRECISION,
    last_used_at DOUBLE PRECISION,
    revoked_at   DOUBLE PRECISION
);
CREATE INDEX app_tokens_by_app ON app_tokens (app_key, created_at);
