"""The two engines of the store: one schema, one behaviour, and PostgreSQL's own failure modes."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from mqttpush.errors import StoreError, StoreUnavailable
from mqttpush.store import postgres as pg
from mqttpush.store.store import Store, _migrations
from tests.pg import PgServer, pg_server
from tests.store.fake_clock import FakeClock


def _sqlite_schema(store: Store) -> dict[str, set[str]]:
    return {t: store._columns(t) for t in store._tables() if not t.startswith("sqlite_")}


def test_both_engines_reach_the_same_schema_version() -> None:
    assert pg.migrations()[-1][0] == _migrations()[-1][0]


def test_both_engines_have_the_same_tables_and_columns(
    data_dir: Path, clock: FakeClock, pg: PgServer
) -> None:
    lite = Store(data_dir, clock=clock)
    post = Store(data_dir, clock=clock, url=pg.fresh_url())
    try:
        assert post.schema_version() == lite.schema_version()
        theirs = _sqlite_schema(post)
        theirs.pop("mqttpush_schema")
        theirs["delivery_events"].discard("rowid")  # SQLite's is implicit
        assert theirs == _sqlite_schema(lite)
    finally:
        lite.close()
        post.close()


def test_reopening_and_a_second_store_on_one_database_migrate_once(
    data_dir: Path, clock: FakeClock, pg: PgServer
) -> None:
    url = pg.fresh_url()
    first = Store(data_dir, clock=clock, url=url)
    second = Store(data_dir, clock=clock, url=url)  # e.g. a second bridge, or the CLI
    try:
        app = first.apps.create_app("shop")
        got = second.apps.get_app(app.app_key)
        assert got is not None and got.secret == app.secret
        assert second.schema_version() == first.schema_version() == _migrations()[-1][0]
    finally:
        first.close()
        second.close()


def test_a_database_with_other_tables_is_refused(data_dir: Path, clock: FakeClock, pg: PgServer) -> None:
    url = pg.fresh_url()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StoreError) as err:
        Store(data_dir, clock=clock, url=url)
    assert err.value.code == "store_foreign"


def test_an_unreachable_server_is_a_clear_start_up_error(data_dir: Path, clock: FakeClock) -> None:
    with pytest.raises(StoreError) as err:
        Store(data_dir, clock=clock, url="postgresql://mqttpush:secret@127.0.0.1:1/mqttpush")
    assert err.value.code == "store_unreachable"
    assert "secret" not in str(err.value)  # the password is never shown


def test_a_restart_of_postgresql_is_unavailable_meanwhile_then_works(
    data_dir: Path, clock: FakeClock
) -> None:
    with pg_server() as server:
        store = Store(data_dir, clock=clock, url=server.fresh_url())
        try:
            app = store.apps.create_app("shop")
            server.stop()
            with pytest.raises(StoreUnavailable):
                store.apps.create_app("during the outage")
            server.start()
            assert store.apps.get_app(app.app_key) is not None  # connects again by itself
            assert store.apps.create_app("after").name == "after"
        finally:
            store.close()


def test_two_processes_making_a_new_postgresql_store_need_one_key(tmp_path: Path, pg: PgServer) -> None:
    url = pg.fresh_url()
    first = Store(tmp_path / "one", url=url)  # makes the key and seals with it at once
    try:
        with pytest.raises(StoreError) as err:
            Store(tmp_path / "two", url=url)  # no key beside it: refused, not a new key
        assert err.value.code == "master_key_missing"
        (tmp_path / "race").mkdir(mode=0o700)  # one that made its own key at the same moment
        (tmp_path / "race" / "master.key").write_bytes(os.urandom(32))
        (tmp_path / "race" / "master.key").chmod(0o600)
        with pytest.raises(StoreError) as err:
            Store(tmp_path / "race", url=url)
        assert err.value.code == "master_key_wrong"
        (tmp_path / "three").mkdir(mode=0o700)
        (tmp_path / "three" / "master.key").write_bytes((tmp_path / "one" / "master.key").read_bytes())
        (tmp_path / "three" / "master.key").chmod(0o600)
        third = Store(tmp_path / "three", url=url)  # the same key copied: fine
        try:
            assert third.accounts.service_credentials() == first.accounts.service_credentials()
        finally:
            third.close()
    finally:
        first.close()
