"""``BEGIN IMMEDIATE … COMMIT`` as a context manager (rollback on error); a savepoint when the
store thread already runs the call inside a group transaction (see ``_GroupCommitter``)."""

from __future__ import annotations

import sqlite3


class Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._nested = False

    def __enter__(self) -> sqlite3.Connection:
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
