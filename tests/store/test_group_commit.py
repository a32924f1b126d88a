"""Store calls queued together run in one transaction, each in its own savepoint; every caller
hears back only after the commit."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mqttpush.store import Store


class _TestStore(Store):
    def insert(self, name: str, fail: bool = False) -> bool:
        with self._tx():
            self._conn.execute(
                "INSERT INTO apps (app_key, name, secret_enc, created_at) VALUES (?, ?, x'00', 0)",
                (name, name),
            )
            if fail:
                raise ValueError(f"{name} fails after writing")
        return self._conn.in_transaction  # True only inside a group transaction

    def commit_behind_the_groups_back(self) -> None:
        self._conn.execute("COMMIT")


@pytest.fixture
def tstore(data_dir: Path) -> Iterator[_TestStore]:
    s = _TestStore(data_dir)
    yield s
    s.close()


def _names(data_dir: Path) -> set[str]:
    """What another connection sees: only committed rows."""
    conn = sqlite3.connect(data_dir / "mqttpush.db")
    try:
        return {r[0] for r in conn.execute("SELECT name FROM apps")}
    finally:
        conn.close()


async def _queued(store: Store, calls: list[Any]) -> list[Any]:
    """Run ``calls`` while the store thread is held, so that they queue up behind it."""
    gate = threading.Event()
    blocker = asyncio.ensure_future(store.run(gate.wait, 10))
    await asyncio.sleep(0)  # one loop turn: the blocker's call is queued first
    tasks = [asyncio.ensure_future(store.run(*c)) for c in calls]
    await asyncio.sleep(0)  # and every other call behind it
    gate.set()
    assert await blocker is True
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_failing_call_rolls_back_only_its_own_writes(tstore: _TestStore, data_dir: Path) -> None:
    s = tstore
    results = await _queued(s, [(s.insert, "a"), (s.insert, "b", True), (s.insert, "c")])
    assert results[0] is True and results[2] is True  # they ran inside one group transaction
    assert isinstance(results[1], ValueError)
    names = _names(data_dir)
    assert {"a", "c"} <= names and "b" not in names


async def test_results_come_after_the_commit(tstore: _TestStore, data_dir: Path) -> None:
    s = tstore
    assert await s.run(s.insert, "solo") is False  # alone: its own transaction
    assert "solo" in _names(data_dir)
    results = await _queued(s, [(s.insert, f"g{i}") for i in range(5)])
    assert results == [True] * 5
    assert {f"g{i}" for i in range(5)} <= _names(data_dir)


def _in_transaction(store: Store) -> bool:
    return store._conn.in_transaction


async def test_only_the_stores_own_methods_share_a_transaction(tstore: _TestStore) -> None:
    s = tstore
    results = await _queued(s, [(s.apps.get_app, "nope"), (_in_transaction, s), (s.insert, "z")])
    assert results == [None, False, False]  # the plain function, and what follows it, run alone


async def test_a_method_that_ends_the_group_does_not_make_calls_run_twice(
    tstore: _TestStore, data_dir: Path
) -> None:
    s = tstore
    results = await _queued(s, [(s.insert, "x"), (s.commit_behind_the_groups_back,), (s.insert, "y")])
    assert results == [True, None, False]  # x in the (ended) group, y alone afterwards, once each
    assert {"x", "y"} <= _names(data_dir)


async def test_many_concurrent_calls_all_answer(tstore: _TestStore) -> None:
    s = tstore
    results = await asyncio.gather(*(s.run(s.insert, f"m{i}") for i in range(200)))
    assert len(results) == 200
    assert s._conn.execute("SELECT count(*) FROM apps WHERE name LIKE 'm%'").fetchone()[0] == 200


async def test_repository_methods_share_the_group_transaction(tstore: _TestStore, data_dir: Path) -> None:
    s = tstore  # store.apps.create_app is an AppRepository method, grouped as the store's own
    results = await _queued(s, [(s.insert, "a"), (s.apps.create_app, "b"), (s.insert, "c")])
    assert results[0] is True and results[2] is True  # one group transaction, not three
    assert results[1].name == "b"
    assert {"a", "c"} <= _names(data_dir) and "b" in _names(data_dir)
