"""Vendor tokens in the store: masked for display, tombstones, sealed at rest, and migrations 0005 and 0007 on old data."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path

import pytest

from mqttpush.errors import StoreError
from mqttpush.store.devices import MaskedVendorToken
from mqttpush.store.store import DB_FILE, KEY_FILE, Store, _migrations
from mqttpush.store.vendors import mask_token
from tests.store.fake_clock import START, FakeClock


@pytest.mark.parametrize(
    ("vendor", "token", "masked"),
    [
        ("apns", "0" * 58 + "c0ffee", "…c0ffee"),
        ("fcm", "fcm-token-" + "x" * 140 + "Zy9_-a", "…Zy9_-a"),
        ("hms", "short", "…short"),
        ("webpush", json.dumps({"endpoint": "https://push.example/send/abc123", "keys": {}}), "…abc123"),
        ("webpush", "not json at all", "…at all"),
    ],
)
def test_mask_token_shows_only_the_last_six(vendor: str, token: str, masked: str) -> None:
    assert mask_token(vendor, token) == masked


def test_masked_tokens_are_live_first_then_newest(store: Store, clock: FakeClock) -> None:
    app = store.apps.create_app("shop")
    device = store.devices.register_device(app.app_key, "i1", "android").device_id
    store.devices.set_vendor_token(app.app_key, device, "fcm", "old-token-111111")
    clock.advance(10)
    store.devices.set_vendor_token(app.app_key, device, "fcm", "new-token-222222")
    assert [(t.token, t.added_at) for t in store.devices.masked_vendor_tokens(device)] == [
        ("…222222", START + 10),
        ("…111111", START),
    ]
    assert store.devices.vendor_tokens(device)[0].token == "new-token-222222"


def _as_released(data_dir: Path, version: int, tokens: list[tuple[str, str, str, dict[str, object]]]) -> None:
    """Turn the store back into one of schema ``version`` (4 or 6) holding ``tokens`` in clear, as a
    store of that release kept them: ``(device_id, vendor, token, {column: value})``."""
    conn = sqlite3.connect(data_dir / DB_FILE)
    history = version >= 5  # 0005's columns
    conn.execute("DROP TABLE vendor_tokens")  # 0007 rebuilt it, keyed by the token's hash
    conn.execute(
        "CREATE TABLE vendor_tokens (device_id TEXT NOT NULL REFERENCES devices(device_id),"
        " vendor TEXT NOT NULL, token TEXT NOT NULL, updated_at REAL NOT NULL,"
        + (" last_used_at REAL, removed_at REAL, removed_reason TEXT," if history else "")
        + " PRIMARY KEY (device_id, vendor, token)) WITHOUT ROWID"
    )
    for device_id, vendor, token, extra in tokens:
        row = {"device_id": device_id, "vendor": vendor, "token": token, "updated_at": START} | extra
        conn.execute(
            f"INSERT INTO vendor_tokens ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )
    if version < 6:
        for column in ("previous_secret_enc", "previous_until"):  # what 0006 added
            conn.execute(f"ALTER TABLE apps DROP COLUMN {column}")
    _undo_after(conn, version)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()


def _undo_after(conn: sqlite3.Connection, version: int) -> None:
    """Take out what the migrations after ``version`` (other than 0007's vendor_tokens rebuild,
    done above) added: their indexes, then their columns, then their tables."""
    later = "\n".join(sql for number, sql in _migrations() if number > version)
    for index in re.findall(r"CREATE (?:UNIQUE )?INDEX (?:IF NOT EXISTS )?(\w+)", later, flags=re.I):
        conn.execute(f"DROP INDEX IF EXISTS {index}")
    for table, column in re.findall(r"ALTER TABLE (\w+) ADD COLUMN (\w+)", later, flags=re.I):
        if table != "vendor_tokens" and (table != "apps" or version >= 6):  # done above
            conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    for table in re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?\"?(\w+)", later, flags=re.I):
        if table != "vendor_tokens":
            conn.execute(f"DROP TABLE IF EXISTS {table}")


def _stored_bytes(data_dir: Path) -> bytes:
    """Everything SQLite keeps on disk for the store: the database file and its WAL."""
    return b"".join(p.read_bytes() for p in (data_dir / DB_FILE, data_dir / f"{DB_FILE}-wal") if p.exists())


def _raw_rows(data_dir: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(data_dir / DB_FILE)
    try:
        return conn.execute("SELECT * FROM vendor_tokens").fetchall()
    finally:
        conn.close()


def _shows(rows: list[tuple[object, ...]], text: str) -> bool:
    return any(text.encode() in (v if isinstance(v, bytes) else str(v).encode()) for row in rows for v in row)


def test_migration_0005_keeps_existing_tokens_live(data_dir: Path, clock: FakeClock) -> None:
    store = Store(data_dir, clock=clock)
    app = store.apps.create_app("shop")
    device = store.devices.register_device(app.app_key, "i1", "ios").device_id
    store.close()
    _as_released(data_dir, 4, [(device, "apns", "a" * 64, {})])

    again = Store(data_dir, clock=clock)
    try:
        assert again.schema_version() >= 5
        assert [t.token for t in again.devices.vendor_tokens(device)] == ["a" * 64]
        assert again.devices.masked_vendor_tokens(device) == [
            MaskedVendorToken(
                vendor="apns",
                token="…aaaaaa",
                added_at=START,
                last_used_at=None,
                removed_at=None,
                removed_reason=None,
            )
        ]
        assert again.devices.route_facts([device])[device].tokens == (("apns", "a" * 64),)
    finally:
        again.close()


WEBPUSH = json.dumps(
    {"endpoint": "https://push.example/send/sub-7f3a9c1e5b", "keys": {"p256dh": "BPk3yQ9z", "auth": "aZ8kq1"}}
)
TOKENS = {"apns": "d" * 60 + "c0ffee", "fcm": "fcm-device-token-Zy9_Qm4x", "webpush": WEBPUSH}
# What of each token must never be on disk in clear (the endpoint is the webpush secret's heart).
SECRETS = {"apns": TOKENS["apns"], "fcm": TOKENS["fcm"], "webpush": "sub-7f3a9c1e5b"}


def test_registered_tokens_are_sealed_on_disk(data_dir: Path, clock: FakeClock) -> None:
    store = Store(data_dir, clock=clock)
    app = store.apps.create_app("shop")
    device = store.devices.register_device(app.app_key, "i1", "android").device_id
    store.devices.set_vendor_token(app.app_key, device, "apns", TOKENS["apns"])
    store.devices.set_vendor_tokens([(device, "fcm", TOKENS["fcm"]), (device, "webpush", TOKENS["webpush"])])
    stored = _stored_bytes(data_dir)
    rows = _raw_rows(data_dir)
    assert {t.vendor: t.token for t in store.devices.vendor_tokens(device)} == TOKENS
    store.close()

    assert len(rows) == 3
    for secret in SECRETS.values():
        assert secret.encode() not in stored
        assert secret.encode() not in _stored_bytes(data_dir)  # nor once checkpointed into the file
        assert not _shows(rows, secret)


def test_schema_6_store_with_clear_tokens_ends_sealed(data_dir: Path, clock: FakeClock) -> None:
    store = Store(data_dir, clock=clock)
    app = store.apps.create_app("shop")
    phone = store.devices.register_device(app.app_key, "i1", "android").device_id
    browser = store.devices.register_device(app.app_key, "i2", "web").device_id
    store.close()
    dead = "fcm-dead-token-Kd83hQ"
    _as_released(
        data_dir,
        6,
        [
            (phone, "fcm", TOKENS["fcm"], {"updated_at": START + 5, "last_used_at": START + 6}),
            (phone, "fcm", dead, {"removed_at": START + 1, "removed_reason": "Unregistered"}),
            (phone, "apns", TOKENS["apns"], {}),
            (browser, "webpush", TOKENS["webpush"], {}),
        ],
    )
    assert SECRETS["fcm"].encode() in _stored_bytes(data_dir)  # the release before kept it clear

    again = Store(data_dir, clock=clock)
    try:
        assert again.schema_version() >= 7
        facts = again.devices.route_facts([phone, browser])
        assert facts[phone].tokens == (("fcm", TOKENS["fcm"]), ("apns", TOKENS["apns"]))
        assert facts[browser].tokens == (("webpush", TOKENS["webpush"]),)
        assert again.devices.masked_vendor_tokens(phone) == [
            MaskedVendorToken(
                vendor="fcm",
                token="…9_Qm4x",
                added_at=START + 5,
                last_used_at=START + 6,
                removed_at=None,
                removed_reason=None,
            ),
            MaskedVendorToken(
                vendor="apns",
                token="…c0ffee",
                added_at=START,
                last_used_at=None,
                removed_at=None,
                removed_reason=None,
            ),
            MaskedVendorToken(
                vendor="fcm",
                token="…Kd83hQ",
                added_at=START,
                last_used_at=None,
                removed_at=START + 1,
                removed_reason="Unregistered",
            ),
        ]
        assert [t.token for t in again.devices.masked_vendor_tokens(browser)] == ["…9c1e5b"]
        rows = _raw_rows(data_dir)
    finally:
        again.close()

    assert len(rows) == 4
    for secret in (*SECRETS.values(), dead):
        assert not _shows(rows, secret)
        assert secret.encode() not in _stored_bytes(data_dir)  # not even in the old table's freed pages
    Store(data_dir, clock=clock).close()  # opening again finds nothing left to do


def test_a_dead_token_is_removed_by_its_value(store: Store) -> None:
    app = store.apps.create_app("shop")
    device = store.devices.register_device(app.app_key, "i1", "android").device_id
    store.devices.set_vendor_token(app.app_key, device, "fcm", "fcm-token-one")
    store.devices.set_vendor_token(app.app_key, device, "fcm", "fcm-token-two")
    store.devices.set_vendor_token(app.app_key, device, "fcm", "fcm-token-one")  # again: still one row
    assert sorted(t.token for t in store.devices.vendor_tokens(device)) == [
        "fcm-token-one",
        "fcm-token-two",
    ]

    assert store.devices.remove_vendor_token(device, "fcm", "fcm-token-one") == 1
    assert [t.token for t in store.devices.vendor_tokens(device)] == ["fcm-token-two"]
    assert store.devices.remove_vendor_token(device, "fcm", "fcm-token-one") == 0
    assert (
        store.devices.remove_vendor_token(device, "apns", "fcm-token-two") == 0
    )  # the vendor is part of the key


def test_sealed_tokens_alone_still_refuse_the_wrong_master_key(data_dir: Path, clock: FakeClock) -> None:
    store = Store(data_dir, clock=clock)
    app = store.apps.create_app("shop")
    device = store.devices.register_device(app.app_key, "i1", "ios").device_id
    store.devices.set_vendor_token(app.app_key, device, "apns", TOKENS["apns"])
    store.close()
    conn = sqlite3.connect(data_dir / DB_FILE)  # leave the tokens as the store's only sealed secrets
    conn.execute("DELETE FROM apps")
    conn.commit()
    conn.close()
    key = data_dir / KEY_FILE

    key.write_bytes(os.urandom(32))
    with pytest.raises(StoreError) as wrong:
        Store(data_dir, clock=clock)
    assert wrong.value.code == "master_key_wrong"

    key.unlink()
    with pytest.raises(StoreError) as missing:
        Store(data_dir, clock=clock)
    assert missing.value.code == "master_key_missing"
    assert not key.exists()  # no new key that would open nothing
