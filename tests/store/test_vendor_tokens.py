"""Vendor tokens in the store: masked for display, tombstones, and migration 0005 on old data."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from mqttpush.store.store import DB_FILE, Store
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
    app = store.create_app("shop")
    device = store.register_device(app.app_key, "i1", "android").device_id
    store.set_vendor_token(app.app_key, device, "fcm", "old-token-111111")
    clock.advance(10)
    store.set_vendor_token(app.app_key, device, "fcm", "new-token-222222")
    assert [(t["token"], t["added_at"]) for t in store.masked_vendor_tokens(device)] == [
        ("…222222", START + 10),
        ("…111111", START),
    ]
    assert store.vendor_tokens(device)[0]["token"] == "new-token-222222"


def test_migration_0005_keeps_existing_tokens_live(data_dir: Path, clock: FakeClock) -> None:
    store = Store(data_dir, clock=clock)
    app = store.create_app("shop")
    device = store.register_device(app.app_key, "i1", "ios").device_id
    store.set_vendor_token(app.app_key, device, "apns", "a" * 64)
    store.close()
    conn = sqlite3.connect(data_dir / DB_FILE)  # back to schema 4, as a store of the last release
    for column in ("last_used_at", "removed_at", "removed_reason"):
        conn.execute(f"ALTER TABLE vendor_tokens DROP COLUMN {column}")
    for column in ("previous_secret_enc", "previous_until"):  # what later migrations added
        conn.execute(f"ALTER TABLE apps DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()

    again = Store(data_dir, clock=clock)
    try:
        assert again.schema_version() >= 5
        assert [t["token"] for t in again.vendor_tokens(device)] == ["a" * 64]
        assert again.masked_vendor_tokens(device) == [
            {
                "vendor": "apns",
                "token": "…aaaaaa",
                "added_at": START,
                "last_used_at": None,
                "removed_at": None,
                "removed_reason": None,
            }
        ]
        assert again.route_facts([device])[device].tokens == (("apns", "a" * 64),)
    finally:
        again.close()
