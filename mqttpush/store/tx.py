"""``BEGIN IMMEDIATE … COMMIT`` as a context manager (rollback on error); a savepoint when the
store thread already runs the call inside a group transaction (see ``_GroupCommitter``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol


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
