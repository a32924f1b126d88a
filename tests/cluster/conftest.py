"""Fixtures of the cluster tests (tests/cluster/harness.py starts the processes)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import psycopg
import pytest

from tests.pg import PgServer, pg_server

_databases = itertools.count(1)


class Postgres:
    """The session's PostgreSQL server; :meth:`fresh_database` gives each test a database of its own."""

    def __init__(self, server: PgServer) -> None:
        self.server = server

    def fresh_database(self) -> str:
        """``CREATE DATABASE`` a new empty database (from ``template0``); returns its URL."""
        name = f"t{next(_databases)}"
        with psycopg.connect(self.server.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return f"postgresql://mqttpush@127.0.0.1:{self.server.port}/{name}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL server for the session (stop/start it through ``postgres.server``)."""
    with pg_server() as server:
        yield Postgres(server)
