"""Fixtures for the SQLite store tests: a real database file in tmp_path and a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mqttpush.store.store import Store
from tests.store.fake_clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """Each engine in turn: None (SQLite in ``data_dir``) or a fresh PostgreSQL schema's URL."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg").fresh_url())
    return None


@pytest.fixture
def store(data_dir: Path, clock: FakeClock, store_url: str | None) -> Iterator[Store]:
    """The store on each engine: every store test taking it runs on SQLite and on PostgreSQL."""
    s = Store(data_dir, clock=clock, url=store_url)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(data_dir: Path, clock: FakeClock) -> Iterator[Store]:
    """The SQLite store alone, for tests of its file (bytes on disk, WAL, file modes)."""
    s = Store(data_dir, clock=clock)
    yield s
    s.close()
