"""Apps, the master key, secrets at rest, request nonces and the service account."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mqttpush.store.store import DB_FILE, KEY_FILE, Store
from tests.store.fake_clock import FakeClock


def raw_db_bytes(data_dir: Path) -> bytes:
    """Every byte SQLite keeps for the database: the main file plus its WAL (and shm) while open."""
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob(DB_FILE + "*")))


def test_master_key_file_is_created_mode_0600(store: Store, data_dir: Path) -> None:
    key = data_dir / KEY_FILE
    assert key.is_file()
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert len(key.read_bytes()) == 32  # AES-256


def test_master_key_is_kept_on_reopen(data_dir: Path, clock: FakeClock) -> None:
    Store(data_dir, clock=clock).close()
    before = (data_dir / KEY_FILE).read_bytes()
    Store(data_dir, clock=clock).close()
    assert (data_dir / KEY_FILE).read_bytes() == before


def test_app_secret_is_not_stored_in_plaintext_but_readable(sqlite_store: Store, data_dir: Path) -> None:
    store = sqlite_store
    app = store.apps.create_app("shop")
    assert app.secret
    assert app.app_key.encode() in raw_db_bytes(data_dir)  # the row is in the bytes read (WAL included)
    assert app.secret.encode() not in raw_db_bytes(data_dir)
    assert store.apps.get_app(app.app_key) == app
    store.close()
    # After close the WAL is checkpointed into the main file; still no plaintext there.
    assert app.secret.encode() not in raw_db_bytes(data_dir)
    assert app.app_key.encode() in raw_db_bytes(data_dir)  # the check above looks at the right bytes


def test_device_tokens_and_service_password_are_not_stored_in_plaintext(store: Store, data_dir: Path) -> None:
    app = store.apps.create_app("shop")
    reg = store.devices.register_device(app.app_key, "install-1", "android")
    _, password = store.accounts.service_credentials()
    raw = raw_db_bytes(data_dir)
    assert reg.device_token.encode() not in raw
    assert reg.device_token.split(".", 1)[1].encode() not in raw
    assert password.encode() not in raw


def test_get_app_returns_secret_after_reopen(data_dir: Path, clock: FakeClock, store_url: str | None) -> None:
    first = Store(data_dir, clock=clock, url=store_url)
    app = first.apps.create_app("shop")
    first.close()
    again = Store(data_dir, clock=clock, url=store_url)
    try:
        got = again.apps.get_app(app.app_key)
        assert got is not None
        assert got.secret == app.secret
        assert got.name == "shop"
    finally:
        again.close()


def test_get_app_of_unknown_key_is_none(store: Store) -> None:
    store.apps.create_app("shop")
    assert store.apps.get_app("anonexistentkey0") is None


def test_create_app_gives_distinct_keys_and_secrets(store: Store) -> None:
    a = store.apps.create_app("one")
    b = store.apps.create_app("two")
    assert a.app_key != b.app_key
    assert a.secret != b.secret
    assert a.name == "one"


def test_list_apps_counts_devices(store: Store, clock: FakeClock) -> None:
    shop = store.apps.create_app("shop")
    clock.advance(1)
    news = store.apps.create_app("news")
    clock.advance(1)
    empty = store.apps.create_app("empty")
    for i in range(3):
        store.devices.register_device(shop.app_key, f"install-{i}", "android")
    store.devices.register_device(shop.app_key, "install-0", "android")  # re-registration is not a new device
    store.devices.register_device(news.app_key, "install-0", "ios")

    listed = store.apps.list_apps()
    assert [a.app_key for a in listed] == [shop.app_key, news.app_key, empty.app_key]
    counts = {a.app_key: a.devices for a in listed}
    assert counts == {shop.app_key: 3, news.app_key: 1, empty.app_key: 0}
    assert listed[0].name == "shop"
    assert listed[0].created_at == listed[1].created_at - 1


# --- nonces -----------------------------------------------------------------------------------


def test_nonce_replay_within_window_is_refused(store: Store, clock: FakeClock) -> None:
    app = store.apps.create_app("shop")
    assert store.apps.use_nonce(app.app_key, "nonce-aaaaaaaaaaaa", 300) is True
    assert store.apps.use_nonce(app.app_key, "nonce-aaaaaaaaaaaa", 300) is False
    clock.advance(299)
    assert store.apps.use_nonce(app.app_key, "nonce-aaaaaaaaaaaa", 300) is False
    # Another nonce, or the same nonce for another app, is not a replay.
    assert store.apps.use_nonce(app.app_key, "nonce-bbbbbbbbbbbb", 300) is True
    assert store.apps.use_nonce("another-app-key", "nonce-aaaaaaaaaaaa", 300) is True


def test_nonce_is_usable_again_after_the_window(store: Store, clock: FakeClock) -> None:
    app = store.apps.create_app("shop")
    assert store.apps.use_nonce(app.app_key, "nonce-aaaaaaaaaaaa", 300) is True
    clock.advance(301)
    assert store.apps.use_nonce(app.app_key, "nonce-aaaaaaaaaaaa", 300) is True
    # Using it again starts a new window.
    clock.advance(1)
    assert store.apps.use_nonce(app.app_key, "nonce-aaaaaaaaaaaa", 300) is False


# --- service account --------------------------------------------------------------------------


def test_service_credentials_are_stable(
    store: Store, data_dir: Path, clock: FakeClock, store_url: str | None
) -> None:
    username, password = store.accounts.service_credentials()
    assert username
    assert len(password) >= 32
    assert store.accounts.service_credentials() == (username, password)

    other = Store(data_dir, clock=clock, url=store_url)  # e.g. the CLI while the server runs
    try:
        assert other.accounts.service_credentials() == (username, password)
    finally:
        other.close()
    store.close()

    reopened = Store(data_dir, clock=clock, url=store_url)
    try:
        assert reopened.accounts.service_credentials() == (username, password)
        assert reopened.accounts.authenticate_service(username, password) is True
    finally:
        reopened.close()


def test_authenticate_service(store: Store) -> None:
    username, password = store.accounts.service_credentials()
    assert store.accounts.authenticate_service(username, password) is True
    assert store.accounts.authenticate_service(username, password + "x") is False
    assert store.accounts.authenticate_service(username, "") is False
    assert store.accounts.authenticate_service("someone-else", password) is False


def test_authenticate_service_before_credentials_exist_is_false(store: Store) -> None:
    assert store.accounts.authenticate_service("mqttpush-service", "anything") is False
