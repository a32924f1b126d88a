-- 0011: delivery statistics (issue 16, docs/statistics.md): the PostgreSQL twin of ../0011_stats.sql.

CREATE TABLE stats_minute (
    app_key     TEXT NOT NULL,
    t           BIGINT NOT NULL,                -- start of the minute, unix seconds (UTC)
    platform    TEXT NOT NULL,                  -- '' when unknown
    channel     TEXT NOT NULL,                  -- none | mqtt | apns | fcm | ... | fcm,mqtt
    type        TEXT NOT NULL,                  -- the envelope's type: notification | message | up
    app_version TEXT NOT NULL,                  -- '' when unknown
    targeted    BIGINT  NOT NULL DEFAULT 0,     -- accepted
    published   BIGINT  NOT NULL DEFAULT 0,
    forwarded   BIGINT  NOT NULL DEFAULT 0,
    arrived     BIGINT  NOT NULL DEFAULT 0,
    opened      BIGINT  NOT NULL DEFAULT 0,
    dismissed   BIGINT  NOT NULL DEFAULT 0,
    failed      BIGINT  NOT NULL DEFAULT 0,
    expired     BIGINT  NOT NULL DEFAULT 0,
    dropped     BIGINT  NOT NULL DEFAULT 0,
    cancelled   BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (app_key, t, platform, channel, type, app_version)
);
CREATE INDEX stats_minute_t ON stats_minute (t);

CREATE TABLE stats_hour (
    app_key     TEXT NOT NULL,
    t           BIGINT NOT NULL,                -- start of the hour, unix seconds (UTC)
    platform    TEXT NOT NULL,                  -- '' when unknown
    channel     TEXT NOT NULL,                  -- none | mqtt | apns | fcm | ... | fcm,mqtt
    type        TEXT NOT NULL,                  -- the envelope's type: notification | message | up
    app_version TEXT NOT NULL,                  -- '' when unknown
    targeted    BIGINT  NOT NULL DEFAULT 0,     -- accepted
    published   BIGINT  NOT NULL DEFAULT 0,
    forwarded   BIGINT  NOT NULL DEFAULT 0,
    arrived     BIGINT  NOT NULL DEFAULT 0,
    opened      BIGINT  NOT NULL DEFAULT 0,
    dismissed   BIGINT  NOT NULL DEFAULT 0,
    failed      BIGINT  NOT NULL DEFAULT 0,
    expired     BIGINT  NOT NULL DEFAULT 0,
    dropped     BIGINT  NOT NULL DEFAULT 0,
    cancelled   BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (app_key, t, platform, channel, type, app_version)
);
CREATE INDEX stats_hour_t ON stats_hour (t);

CREATE TABLE stats_day (
    app_key     TEXT NOT NULL,
    t           BIGINT NOT NULL,                -- start of the UTC day, unix seconds (UTC)
    platform    TEXT NOT NULL,                  -- '' when unknown
    channel     TEXT NOT NULL,                  -- none | mqtt | apns | fcm | ... | fcm,mqtt
    type        TEXT NOT NULL,                  -- the envelope's type: notification | message | up
    app_version TEXT NOT NULL,                  -- '' when unknown
    targeted    BIGINT  NOT NULL DEFAULT 0,     -- accepted
    published   BIGINT  NOT NULL DEFAULT 0,
    forwarded   BIGINT  NOT NULL DEFAULT 0,
    arrived     BIGINT  NOT NULL DEFAULT 0,
    opened      BIGINT  NOT NULL DEFAULT 0,
    dismissed   BIGINT  NOT NULL DEFAULT 0,
    failed      BIGINT  NOT NULL DEFAULT 0,
    expired     BIGINT  NOT NULL DEFAULT 0,
    dropped     BIGINT  NOT NULL DEFAULT 0,
    cancelled   BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (app_key, t, platform, channel, type, app_version)
);
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
    n           BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (app_key, t, platform, channel, type, app_version, state, reason)
);
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
    n           BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (app_key, t, platform, channel, type, app_version, state, reason)
);
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
    n           BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (app_key, t, platform, channel, type, app_version, state, reason)
);
CREATE INDEX stats_reason_day_t ON stats_reason_day (t);
