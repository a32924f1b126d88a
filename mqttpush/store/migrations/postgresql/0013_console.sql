-- 0013: the web console (issue 16): its sign-in sessions, and the indexes its paged lists read.
CREATE TABLE console_sessions (
    session_hash TEXT PRIMARY KEY,      -- hex SHA-256 of the cookie's value; the value itself is never stored
    app_key      TEXT NOT NULL REFERENCES apps(app_key),
    csrf_token   TEXT NOT NULL,         -- sent back in X-CSRF-Token on every state-changing call
    via          TEXT NOT NULL,         -- secret | token
    token_id     TEXT,                  -- the access token signed in with (re-checked on each call)
    created_at   DOUBLE PRECISION NOT NULL,
    expires_at   DOUBLE PRECISION NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

-- Keyset pages of messages and tasks, newest first, optionally by state.
CREATE INDEX messages_app_page ON messages (app_key, created_at, msg_id);
CREATE INDEX messages_app_state_page ON messages (app_key, state, created_at, msg_id);
CREATE INDEX tasks_app_page ON tasks (app_key, created_at, task_id);
CREATE INDEX tasks_app_state_page ON tasks (app_key, state, created_at, task_id);
-- Device lookup by an alias of any type.
CREATE INDEX aliases_lookup ON aliases (app_key, alias);
