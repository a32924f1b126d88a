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


@pytest.fixture
def store(data_dir: Path, clock: FakeClock) -> Iterator[Store]:
    s = Store(data_dir, clock=clock)
    yield s
    s.close()
