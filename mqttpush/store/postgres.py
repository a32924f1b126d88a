"""The PostgreSQL engine of the store (``--store postgresql://…``), for several broker nodes and
bridges sharing one store (docs/scale-out.md).

The store's queries are written once, in the SQL both engines speak (see
:class:`~mqttpush.store.core.Repository`); :class:`PgConnection` gives them the few calls of
``sqlite3.Connection`` they use (``execute``, ``executemany``, ``in_transaction``) over psycopg 3,
turning ``?`` placeholders into psycopg's. It runs, like the SQLite connection, on the store's one
thread: transactions are opened with explicit ``BEGIN`` (autocommit otherwise), so the group
committer and :class:`~mqttpush.store.tx.Transaction` work unchanged.

A lost connection (PostgreSQL restarted, network cut) raises :class:`StoreUnavailable` to the
call that met it, never a half-known outcome as success; the next call outside a transaction
connects again.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from typing import Any

import psycopg
import psycopg.errors
from psycopg.pq import TransactionStatus

from mqttpush.errors import StoreError, StoreUnavailable
from mqttpush.store.tx import split_statements

log = logging.getLogger("mqttpush.store")

CONNECT_TIMEOUT_SECONDS = 5
_MIGRATION_LOCK = 0x6D717474  # pg_advisory_xact_lock key: one process migrates at a time
_SCHEMES = ("postgresql://", "postgres://")

IntegrityError = psycopg.IntegrityError
Error = psycopg.Error


def is_postgres_url(url: str | None) -> bool:
    return url is not None and url.startswith(_SCHEMES)


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


@functools.lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """``?`` placeholders to ``%s`` and ``%`` to ``%%``, outside quoted strings and identifiers;
    SQLite's ``BEGIN IMMEDIATE`` to ``BEGIN``."""
    if sql.startswith("BEGIN IMMEDIATE"):
        return "BEGIN"
    out: list[str] = []
    quote = ""
    for ch in sql:
        if quote:
            out.append("%%" if ch == "%" else ch)
            if ch == quote:
                quote = ""
            continue
        if ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    return "".join(out)


class _Rows:
    """What the store reads of a cursor: ``fetchone``, ``fetchall``, iteration and ``rowcount``."""

    __slots__ = ("_cur", "rowcount")

    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur
        self.rowcount = cur.rowcount

    def fetchone(self) -> Any:
        return self._cur.fetchone() if self._cur.description is not None else None

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall() if self._cur.description is not None else []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


def _unavailable(url: str, exc: BaseException) -> StoreUnavailable:
    failure = StoreUnavailable(f"the store ({redact(url)}) cannot be reached now: {exc}".strip())
    failure.__cause__ = exc
    return failure


class PgConnection:
    """The slice of ``sqlite3.Connection`` the store uses, over one psycopg connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.total_changes = 0
        self._conn: psycopg.Connection[Any] | None = None
        self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            # prepare_threshold=None: no server-side prepared statements, so every statement is
            # planned for its own parameters. The store starts empty, and a generic plan made
            # while a table was small stays a sequential scan as it grows: `device import` of
            # 100,000 devices spent 95 % of its time in such a plan of its `install_id IN (…)`.
            conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS, prepare_threshold=None
            )
        except psycopg.OperationalError as exc:
            raise _unavailable(self.url, exc) from exc
        self._conn = conn
        return conn

    def _live(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                log.warning("the store's PostgreSQL connection was lost; connecting again")
            return self._connect()
        return conn

    @property
    def in_transaction(self) -> bool:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            return False
        return conn.info.transaction_status != TransactionStatus.IDLE

    def execute(self, sql: str, params: Any = (), /) -> _Rows:
        conn = self._live()
        try:
            cur = conn.execute(translate(sql), params)
        except psycopg.OperationalError as exc:
            raise _unavailable(self.url, exc) from exc
        if cur.rowcount > 0 and cur.description is None:
            self.total_changes += cur.rowcount
        return _Rows(cur)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> _Rows:
        conn = self._live()
        batch = list(rows)
        cur = conn.cursor()
        if batch:
            try:
                cur.executemany(translate(sql), batch)
            except psycopg.OperationalError as exc:
                raise _unavailable(self.url, exc) from exc
            self.total_changes += max(cur.rowcount, 0)
        return _Rows(cur)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def migrations() -> list[tuple[int, str]]:
    folder = resources.files("mqttpush.store") / "migrations" / "postgresql"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


def schema_version(conn: PgConnection) -> int:
    row = conn.execute("SELECT to_regclass('mqttpush_schema')").fetchone()
    if row is None or row[0] is None:
        return 0
    version = conn.execute("SELECT version FROM mqttpush_schema").fetchone()
    return int(version[0]) if version is not None else 0


def migrate(conn: PgConnection) -> None:
    """Apply the numbered PostgreSQL migrations this database has not seen, one process at a time
    (an advisory lock: bridges and broker nodes starting together migrate once)."""
    known = migrations()
    latest = known[-1][0]
    current = schema_version(conn)
    if current == latest:
        return
    if current > latest:
        raise StoreError(
            f"the store at {redact(conn.url)} has schema {current}, newer than this mqttpush ({latest})",
            code="schema_too_new",
        )
    conn.execute("BEGIN")
    try:
        conn.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        conn.execute("CREATE TABLE IF NOT EXISTS mqttpush_schema (version INTEGER NOT NULL)")
        current = schema_version(conn)
        if current == 0 and conn.execute("SELECT count(*) FROM mqttpush_schema").fetchone()[0] == 0:
            foreign = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
                " AND table_name <> 'mqttpush_schema'"
            ).fetchone()[0]
            if foreign:
                raise StoreError(
                    f"the database at {redact(conn.url)} holds another program's tables, not an mqttpush store",
                    code="store_foreign",
                )
            conn.execute("INSERT INTO mqttpush_schema (version) VALUES (0)")
        for version, sql in known:
            if version <= current:
                continue
            for statement in split_statements(sql):
                conn.execute(statement)
            conn.execute("UPDATE mqttpush_schema SET version = ?", (version,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def probe(conn: PgConnection) -> None:
    """Can the store write now? A real (empty) write transaction, committed."""
    conn.execute("BEGIN")
    try:
        conn.execute("UPDATE mqttpush_schema SET version = version")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
