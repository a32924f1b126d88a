-- 0011: delivery statistics (issue 16, docs/statistics.md). Every delivery history row is counted
-- in memory as it is written and flushed every few seconds into per-minute rows, rolled up into
-- hour and day rows in the same transaction; each granularity has its own retention.
-- Counters are events of the history (accepted = targeted), per app, platform, channel, type,
-- app version and time bucket; failures and drops are counted by reason too.

CREATE TABLE stats_minute (
    app_key     TEXT NOT NULL,
    t           BIGINT NOT NULL,                -- start of the minute, unix seconds (UTC)
    platform    TEXT NOT NULL,                  -- '' when unknown
    channel     TEXT NOT NULL,                  -- none | mqtt | apns | fcm | ... | fcm,mqtt
    type        TEXT NOT NULL,                  -- the envelope's type: notification | message | up
    app_version TEXT NOT NULL,                  -- '' when unknown
    targeted    INTEGER NOT NULL DEFAULT 0,     -- accepted
    published   INTEGER NOT NULL DEFAULT 0,
    forwarded   INTEGER NOT NULL DEFAULT 0,
    arrived     INTEGER NOT NULL DEFAULT 0,
    opened      INTEGER NOT NULL DEFAULT 0,
    dismissed   INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    expired     INTEGER NOT NULL DEFAULT 0,
    dropped     INTEGER NOT NULL DEFAULT 0,
    cancelled   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app_key, t, platform, channel, type, app_version)
) WITHOUT ROWID;
CREATE INDEX stats_minute_t ON stats_minute (t);

CREATE TABLE stats_hour (
    app_key     TEXT NOT NULL,
    t           BIGINT NOT NULL,                -- start of the hour, unix seconds (UTC)
    platform    TEXT NOT NULL,                  -- '' when unknown
    channel     TEXT NOT NULL,                  -- none | mqtt | apns | fcm | ... | fcm,mqtt
    type        TEXT NOT NULL,                  -- the envelope's type: notification | message | up
    app_version TEXT NOT NULL,                  -- '' when unknown
    targeted    INTEGER NOT NULL DEFAULT 0,     -- accepted
    published   INTEGER NOT NULL DEFAULT 0,
    forwarded   INTEGER NOT NULL DEFAULT 0,
    arrived     INTEGER NOT NULL DEFAULT 0,
    opened      INTEGER NOT NULL DEFAULT 0,
    dismissed   INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    expired     INTEGER NOT NULL DEFAULT 0,
    dropped     INTEGER NOT NULL DEFAULT 0,
    cancelled   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app_key, t, platform, channel, type, app_version)
) WITHOUT ROWID;
CREATE INDEX stats_hour_t ON stats_hour (t);

CREATE TABLE stats_day (
    app_key     TEXT NOT NULL,
    t           BIGINT NOT NULL,                -- start of the UTC day, unix seconds (UTC)
    platform    TEXT NOT NULL,                  -- '' when unknown
    channel     TEXT NOT NULL,                  -- none | mqtt | apns | fcm | ... | fcm,mqtt
    type        TEXT NOT NULL,                  -- the envelope's type: notification | message | up
    app_version TEXT NOT NULL,                  -- '' when unknown
    targeted    INTEGER NOT NULL DEFAULT 0,     -- accepted
    published   INTEGER NOT NULL DEFAULT 0,
    forwarded   INTEGER NOT NULL DEFAULT 0,
    arrived     INTEGER NOT NULL DEFAULT 0,
    opened      INTEGER NOT NULL DEFAULT 0,
    dismissed   INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    expired     INTEGER NOT NULL DEFAULT 0,
    dropped     INTEGER NOT NULL DEFAULT 0,
    cancelled   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app_key, t, platform, channel, type, app_version)
) WITHOUT ROWID;
CREATE INDEX stats_day_t ON stats_day (t);

CREATE TABLE stats_reason_minute (
    app_key     TEXT NOT NULL,
    t           BIGINT NOT NULL,                -- start of the minute, unix seconds (UTC)
    platform    TEXT NOT NULL,                  -- '' when unknown
    channel     TEXT NOT NULL,                  -- none | mqtt | apns | fcm | ... | fcm,mqtt
    type        TEXT NOT NULL,                  -- the envelope's type: notification | message | up
    app_version TEXT NOT NULL,                  -- '' when unknown
    state       TEXT NOT NULL,                  -- failed | dropped
    reason      TEXT NOT NULL,                  -- the vendor's or the bridge's reason
    n           INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app_key, t, platform, channel, type, app_version, state, reason)
) WITHOUT ROWID;
CREATE INDEX stats_reason_minute_t ON stats_reason_minute (t);

CREATE TABLE stats_reason_hour (
    app_key     TEXT NOT NULL,
    t           BIGINT NOT NULL,                -- start of the hour, unix seconds (UTC)
    platform    TEXT NOT NULL,                  -- '' when unknown
    channel     TEXT NOT NULL,                  -- none | mqtt | apns | fcm | ... | fcm,mqtt
    type        TEXT NOT NULL,                  -- the envelope's type: notification | message | up
    app_version TEXT NOT NULL,                  -- '' when unknown
    state       TEXT NOT NULL,                  -- failed | dropped
    reason      TEXT NOT NULL,                  -- the vendor's or the bridge's reason
    n           INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app_key, t, platform, channel, type, app_version, state, reason)
) WITHOUT ROWID;
CREATE INDEX stats_reason_hour_t ON stats_reason_hour (t);

CREATE TABLE stats_reason_day (
    app_key     TEXT NOT NULL,
    t           BIGINT NOT NULL,                -- start of the UTC day, unix seconds (UTC)
    platform    TEXT NOT NULL,                  -- '' when unknown
    channel     TEXT NOT NULL,                  -- none | mqtt | apns | fcm | ... | fcm,mqtt
    type        TEXT NOT NULL,                  -- the envelope's type: notification | message | up
    app_version TEXT NOT NULL,                  -- '' when unknown
    state       TEXT NOT NULL,                  -- failed | dropped
    reason      TEXT NOT NULL,                  -- the vendor's or the bridge's reason
    n           INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app_key, t, platform, channel, type, app_version, state, reason)
) WITHOUT ROWID;
CREATE INDEX stats_reason_day_t ON stats_reason_day (t);
