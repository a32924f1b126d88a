-- 0007: vendor tokens sealed at rest like the other secrets (issue 18). A token is found by its
-- hex SHA-256 (token_hash: "remove this dead token", registering one again) and read back from
-- token_enc, sealed with master.key. The clear token was part of the primary key, so the table is
-- rebuilt (SQLite's 12-step ALTER TABLE; nothing references vendor_tokens and it has no indexes,
-- triggers or views). mqttpush_token_hash() and mqttpush_seal() are SQL functions the store gives
-- its connection while it migrates; it also runs migrations with secure_delete on, so the old
-- table's freed pages keep no clear token.
CREATE TABLE vendor_tokens_sealed (
    device_id      TEXT NOT NULL REFERENCES devices(device_id),
    vendor         TEXT NOT NULL,       -- apns | fcm | hms | mipush | webpush
    token_hash     TEXT NOT NULL,       -- hex SHA-256 of the token
    token_enc      BLOB NOT NULL,       -- the token, sealed (webpush: the subscription JSON)
    updated_at     REAL NOT NULL,
    last_used_at   REAL,
    removed_at     REAL,
    removed_reason TEXT,
    PRIMARY KEY (device_id, vendor, token_hash)
) WITHOUT ROWID;

INSERT INTO vendor_tokens_sealed
    (device_id, vendor, token_hash, token_enc, updated_at, last_used_at, removed_at, removed_reason)
SELECT device_id, vendor, mqttpush_token_hash(token), mqttpush_seal(token), updated_at, last_used_at,
       removed_at, removed_reason
FROM vendor_tokens;

DROP TABLE vendor_tokens;

ALTER TABLE vendor_tokens_sealed RENAME TO vendor_tokens;
