"""``BEGIN IMMEDIATE … COMMIT`` as a context manager (rollback on error); a savepoint when the
store thread already runs the call inside a group transaction (see ``_GroupCommitter``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any, Protocol

from mqttpush.errors import StoreError


class Cursor(Protocol):
    """What the store reads of a query's result, on either engine."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """The calls the store's queries make, on either engine: ``sqlite3.Connection`` itself, or
    :class:`~mqttpush.store.postgres.PgConnection`."""

    @property
    def in_transaction(self) -> bool: ...

    @property
    def total_changes(self) -> int: ...

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Any, /) -> Cursor: ...

    def close(self) -> None: ...


class Transaction:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._nested = False

    def __enter__(self) -> Connection:
        self._nested = self._conn.in_transaction
        self._conn.execute("SAVEPOINT tx" if self._nested else "BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._nested:
            if exc_type is not None:
                self._conn.execute("ROLLBACK TO tx")
            self._conn.execute("RELEASE tx")
        elif exc_type is None:
            self._conn.execute("COMMIT")
        else:
            self._conn.execute("ROLLBACK")


def split_statements(sql: str) -> list[str]:
    """A migration split into statements, each complete by SQL's rules for ``;``, quotes and
    comments (both engines run one statement a call)."""
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf)
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()):
        raise StoreError(f"unterminated statement in a migration: {buf[:80]!r}", code="bad_migration")
    return out
