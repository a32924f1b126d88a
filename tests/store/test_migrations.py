"""Numbered migrations, reopening, refusing a newer schema, WAL mode."""

from __future__ import annotations

import re
import sqlite3
from importlib import resources
from pathlib import Path

import pytest

from mqttpush.errors import StoreError
from mqttpush.store.store import DB_FILE, Store
from tests.store.fake_clock import FakeClock


def highest_migration() -> int:
    """The highest number among the shipped ``NNNN_name.sql`` files, read independently of the store."""
    folder = resources.files("mqttpush.store") / "migrations"
    numbers = [int(m.group(1)) for e in folder.iterdir() if (m := re.match(r"^(\d+)_.*\.sql$", e.name))]
    assert numbers, "no migrations shipped"
    return max(numbers)


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_new_store_is_at_the_highest_migration(sqlite_store: Store, data_dir: Path) -> None:
    store = sqlite_store
    assert store.schema_version() == highest_migration()
    assert user_version(data_dir / DB_FILE) == highest_migration()


def test_new_store_has_the_tables_of_the_schema(store: Store) -> None:
    tables = store._tables()
    expected = {"apps", "devices", "messages", "deliveries", "delivery_events", "nonces", "service_accounts"}
    assert expected <= tables


def test_reopening_the_same_dir_is_idempotent(data_dir: Path, clock: FakeClock) -> None:
    first = Store(data_dir, clock=clock)
    app = first.apps.create_app("shop")
    first.close()

    again = Store(data_dir, clock=clock)
    try:
        assert again.schema_version() == highest_migration()
        assert again.apps.get_app(app.app_key) == app
        assert [a.app_key for a in again.apps.list_apps()] == [app.app_key]
    finally:
        again.close()

    third = Store(data_dir, clock=clock)
    third.close()
    assert user_version(data_dir / DB_FILE) == highest_migration()


def test_opening_while_another_store_is_open(data_dir: Path, clock: FakeClock) -> None:
    first = Store(data_dir, clock=clock)
    second = Store(data_dir, clock=clock)
    try:
        assert first.schema_version() == second.schema_version() == highest_migration()
    finally:
        second.close()
        first.close()


def test_schema_newer_than_known_raises_schema_too_new(data_dir: Path, clock: FakeClock) -> None:
    Store(data_dir, clock=clock).close()
    conn = sqlite3.connect(data_dir / DB_FILE)
    conn.execute(f"PRAGMA user_version = {highest_migration() + 1}")
    conn.commit()
    conn.close()

    with pytest.raises(StoreError) as info:
        Store(data_dir, clock=clock)
    assert info.value.code == "schema_too_new"
    # Refusing must leave the newer database as it was.
    assert user_version(data_dir / DB_FILE) == highest_migration() + 1


def test_journal_mode_is_wal(sqlite_store: Store, data_dir: Path) -> None:
    store = sqlite_store
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    # WAL is persistent in the file: a plain connection sees it too.
    conn = sqlite3.connect(data_dir / DB_FILE)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    finally:
        conn.close()
