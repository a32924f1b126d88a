"""The store: SQLite (WAL, numbered migrations) by default, PostgreSQL with ``--store postgresql://…``.

:class:`Store` is the plumbing: the engine, connection and transactions, the group-committing
store thread, sealing, migrations, the app caches, and the delivery-history helpers. Each
aggregate's queries are a repository attached to it (``store.apps``, ``store.devices``,
``store.messages``, ``store.tasks``, ``store.vendors``…, one module each).

Every query is synchronous and runs on the store's single worker thread when called through
:meth:`Store.run` (``await store.run(store.devices.get_device, …)``), so the event loop never
blocks on SQLite and writes are serialized without locks. Local admin commands (``mqttpush app
create``) call the queries directly from their own process; WAL plus a busy timeout lets them
share the file with a running server.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mqttpush.clock import Clock, SystemClock
from mqttpush.errors import BadRequest, StoreError, StoreUnavailable
from mqttpush.models import (
    App,
    DeliveryState,
)
from mqttpush.store import postgres as pg
from mqttpush.store.accounts import AccountRepository
from mqttpush.store.apps import AppRepository
from mqttpush.store.console import ConsoleRepository
from mqttpush.store.core import Event, Repository, StoreCore, TransitionListener, chunks
from mqttpush.store.devices import DeviceRepository
from mqttpush.store.endpoints import EndpointRepository
from mqttpush.store.inbox import InboxRepository
from mqttpush.store.leases import LeaseRepository
from mqttpush.store.lock import prepare_data_dir, unwritable
from mqttpush.store.messages import MessageRepository
from mqttpush.store.stats import StatsRepository
from mqttpush.store.tasks import TaskRepository
from mqttpush.store.tokens import TokenRepository
from mqttpush.store.tx import Connection, Transaction, split_statements
from mqttpush.store.vendors import VendorRepository, vendor_token_hash
from mqttpush.store.webhooks import WebhookRepository
from mqttpush.telemetry import CommitStats

P = ParamSpec("P")
T = TypeVar("T")

DB_FILE = "mqttpush.db"
KEY_FILE = "master.key"


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("mqttpush.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql"):
            found.append((int(name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


def sqlite_dir(url: str) -> Path:
    """The data dir of ``sqlite:///PATH/mqttpush.db`` (as SQLAlchemy: a fourth slash makes PATH
    absolute)."""
    check_store_url(url)
    path = Path(url.removeprefix("sqlite:///"))
    return path.parent if path.suffix == ".db" else path


def check_store_url(url: str) -> None:
    """Refuse a ``--store`` that names no engine we have, or an SQLite file not named mqttpush.db."""
    if pg.is_postgres_url(url):
        return
    if not url.startswith("sqlite:///") or url == "sqlite:///":
        raise BadRequest(
            f"--store must be sqlite:///PATH/{DB_FILE} or postgresql://…, not {pg.redact(url)!r}",
            code="bad_store_url",
        )
    path = Path(url.removeprefix("sqlite:///"))
    if path.suffix == ".db" and path.name != DB_FILE:
        raise BadRequest(
            f"the SQLite store is a file named {DB_FILE}, not {path.name!r}", code="bad_store_url"
        )


class _Sealer:
    """AES-GCM with the data dir's master key, for secrets the server must read back (HMAC keys).

    ``create``: write a new key if there is none (only for a store with nothing sealed yet: a new
    key cannot open old secrets). A missing key otherwise, or one of the wrong size, is refused."""

    def __init__(self, key_path: Path, *, create: bool = False) -> None:
        if not key_path.exists():
            if not create:
                raise StoreError(
                    f"{key_path} is missing and the store holds secrets sealed with it;"
                    " restore it from a backup of this data dir",
                    code="master_key_missing",
                )
            # Written aside, then linked into place: a second process never reads a half-written key.
            tmp = key_path.with_name(f".{key_path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(AESGCM.generate_key(bit_length=256))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, key_path)
            except FileExistsError:
                pass  # another process created it first: use theirs
            finally:
                tmp.unlink()
        key = key_path.read_bytes()
        if len(key) != _KEY_BYTES:
            raise StoreError(
                f"{key_path} holds {len(key)} bytes, not a {_KEY_BYTES}-byte key", code="master_key_invalid"
            )
        self._aead = AESGCM(key)

    def seal(self, plain: str) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, plain.encode(), None)

    def open(self, sealed: bytes) -> str:
        return self._aead.decrypt(sealed[:12], sealed[12:], None).decode()


_KEY_BYTES = 32
# Where sealed secrets live, by the migration that brought them: one of them tells whether the
# store has secrets and whether the key opens them.
_SEALED_COLUMNS = (
    ("apps", "secret_enc"),
    ("service_accounts", "password_enc"),
    ("vendor_credentials", "config_enc"),
    ("vendor_tokens", "token_enc"),
)
_FILE_MODE = 0o600
# SQLite's primary result codes that say the file is no database of ours, or is damaged.
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_READ_ONLY_CODES = frozenset({sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM})


def _open_error(path: Path, exc: sqlite3.Error) -> StoreError:
    """The start-up refusal an SQLite error at open means (docs/operations.md)."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code in _CORRUPT_CODES:
        return StoreError(f"{path} is damaged or not a database: {exc}", code="store_corrupt")
    if code in _READ_ONLY_CODES:
        return StoreError(f"cannot write {path}: {exc}", code="data_dir_unwritable")
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreError(f"{path} stays locked by another process: {exc}", code="store_busy")
    return StoreError(f"cannot open {path}: {exc}", code="store_error")


def _tighten(path: Path) -> None:
    """Files of the data dir are 0600: they hold device token hashes and sealed secrets."""
    try:
        st = path.stat()
        if st.st_uid == os.geteuid() and st.st_mode & 0o077:
            path.chmod(_FILE_MODE)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise unwritable(path.parent, exc) from exc


log = logging.getLogger("mqttpush.store")
_GROUP = 64
_BUSY_TIMEOUT_MS = 10_000
_WAL_SWITCH_SECONDS = 0.5


CACHE_SECONDS = 2.0
"""How long an app or its settings read from the store may be used without reading it again."""


def _fresh(read_at: float, now: float) -> bool:
    return 0 <= now - read_at < CACHE_SECONDS  # a clock set back counts as stale


class _WriteHealth:
    """What the store thread last learned about writing: ``failure`` is why the last write could
    not be made (None once one commits again). Set on the store thread, read on the event loop."""

    failure: StoreUnavailable | None = None


class _GroupCommitter:
    """The store thread. Calls that queue up while one runs are run together in one transaction,
    each in its own savepoint (a failing call rolls back only its own writes), with one COMMIT for
    all: under load most of the store's time was COMMITs. Every caller learns its result only
    after the commit, so "accepted" still means "on disk" (docs/architecture.md).

    A write the disk or the lock refuses (disk full, I/O error, busy beyond the timeout) raises
    :class:`StoreUnavailable` to its caller and leaves no transaction open behind it, so the next
    call starts clean: the store works again by itself once the cause is gone."""

    def __init__(self, conn: Connection, health: _WriteHealth, stats: CommitStats) -> None:
        self._conn = conn
        self._health = health
        self._stats = stats  # GET /metrics: calls per group, seconds per group
        self._calls: queue.SimpleQueue[
            tuple[Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="mqttpush-store", daemon=True)
        self._thread.start()

    def submit(
        self, call: Callable[[], Any], loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]
    ) -> None:
        self._calls.put((call, loop, future))

    def stop(self) -> None:
        self._calls.put(None)
        self._thread.join()

    def _work(self) -> None:
        calls = self._calls
        held: Any = False  # a call taken off the queue that could not join the last group
        while True:
            first = calls.get() if held is False else held
            held = False
            if first is None:
                return
            batch = [first]
            # Only the store's own methods share a transaction: each writes inside _tx() and never
            # commits by itself. Other callables (file writes, tests' helpers) run alone.
            while _groupable(first[0]) and len(batch) < _GROUP:
                try:
                    more = calls.get_nowait()
                except queue.Empty:
                    break
                if more is None or not _groupable(more[0]):
                    held = more
                    break
                batch.append(more)
            started = time.perf_counter()
            outcomes = self._run(batch) if len(batch) > 1 else [self._single(first[0])]
            self._stats.observe(len(batch), time.perf_counter() - started)
            for (_, loop, future), (ok, value) in zip(batch, outcomes, strict=True):
                loop.call_soon_threadsafe(_settle, future, ok, value)

    def _single(self, call: Callable[[], Any]) -> tuple[bool, Any]:
        """One call in its own transaction (or none, for a plain read)."""
        conn = self._conn
        changes = conn.total_changes
        ok, value = _outcome(call)
        if not ok and conn.in_transaction:
            # Left open by a COMMIT that failed (busy, disk full): end it, or every later write
            # would nest inside it as a savepoint and never reach the disk.
            self._rollback()
        self._learn(ok, value, conn.total_changes != changes)
        return ok, value

    def _run(self, batch: list[Any]) -> list[tuple[bool, Any]]:
        conn = self._conn
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for call, _, _ in batch:
                conn.execute("SAVEPOINT store_call")
                ok, value = _outcome(call)
                if not conn.in_transaction:
                    if not ok:
                        # SQLite rolled the whole group back (disk full, I/O error): none of the
                        # calls so far is on disk, whatever they returned.
                        raise StoreUnavailable(f"group transaction rolled back: {value}")
                    # A call ended the group's transaction itself: a bug; what ran so far is
                    # whatever that call did to it, the rest runs alone.
                    log.error("store call %r ended the group transaction", call)
                    outcomes.append((ok, value))
                    return outcomes + [self._single(c) for c, _, _ in batch[len(outcomes) :]]
                if not ok:
                    conn.execute("ROLLBACK TO store_call")
                conn.execute("RELEASE store_call")
                outcomes.append((ok, value))
            conn.execute("COMMIT")
            self._learn(True, None, True)
            return outcomes
        except (sqlite3.Error, pg.Error, StoreUnavailable) as exc:
            # BEGIN or COMMIT failed (busy beyond the timeout, disk full): none of the group is
            # on disk; run the calls one by one, each with its own transaction.
            log.warning("group commit of %d calls failed, running them singly: %r", len(batch), exc)
            self._rollback()
            return [self._single(call) for call, _, _ in batch]

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except (sqlite3.Error, pg.Error, StoreUnavailable) as exc:  # may have rolled back by itself
                log.debug("rollback after a failed write: %r", exc)

    def _learn(self, ok: bool, value: Any, wrote: bool) -> None:
        if not ok and isinstance(value, StoreUnavailable):
            self._health.failure = value
        elif ok and wrote:
            self._health.failure = None


def _groupable(call: Callable[[], Any]) -> bool:
    fn = call.func if isinstance(call, functools.partial) else call
    return isinstance(getattr(fn, "__self__", None), Store | Repository)


# SQLite's primary result codes (and OS errors) that say "not now" rather than "never": the disk
# is full, failing or read-only, or another writer held the lock beyond the busy timeout.
_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
    }
)
_UNAVAILABLE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


def _unavailable(exc: BaseException) -> StoreUnavailable | None:
    """The :class:`StoreUnavailable` that ``exc`` means, if it is a transient write refusal. Looks
    down the chain too: a ROLLBACK that fails after SQLite already rolled back hides the cause."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, StoreUnavailable):
            return seen
        code = getattr(seen, "sqlite_errorcode", None)
        if (isinstance(seen, sqlite3.Error) and code is not None and code & 0xFF in _UNAVAILABLE_CODES) or (
            isinstance(seen, OSError) and seen.errno in _UNAVAILABLE_ERRNOS
        ):
            return StoreUnavailable(f"the store cannot write now: {seen}")
        seen = seen.__cause__ or seen.__context__
    return None


def _outcome(call: Callable[[], Any]) -> tuple[bool, Any]:
    try:
        return True, call()
    except Exception as exc:
        unavailable = _unavailable(exc)
        if unavailable is not None and unavailable is not exc:
            unavailable.__cause__ = exc
            return False, unavailable
        return False, exc


_PROBE_BYTES = 64 * 1024


def _probe_write(conn: Connection, data_dir: Path) -> None:
    """Can the store write again? Room beside the database for a few pages, and the write lock
    taken and a commit made (waiting only briefly: a health check must answer)."""
    probe = data_dir / ".mqttpush-probe"
    try:
        with probe.open("wb") as f:
            f.write(b"\0" * _PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    finally:
        probe.unlink(missing_ok=True)
    conn.execute("PRAGMA busy_timeout = 200")
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(f"PRAGMA user_version = {int(conn.execute('PRAGMA user_version').fetchone()[0])}")
        conn.execute("COMMIT")
    finally:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():
        return  # the caller gave up (cancelled); the call itself has run
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class Store(StoreCore):
    """The source of truth: apps, devices, messages, deliveries and their history, each
    aggregate's queries in its repository (``store.messages.accept_message``…)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        clock: Clock | None = None,
        broker_hasher: Callable[[str], str] | None = None,
        url: str | None = None,
    ) -> None:
        """Open (creating and migrating if needed) the store in ``data_dir``, or with ``url``
        ``postgresql://…`` the PostgreSQL database there (``data_dir`` then holds the master key
        and the lock files only; ``sqlite:///PATH`` is the default engine, PATH's directory).

        ``broker_hasher`` turns a new device token into the password hash a foreign broker
        checks (mosquitto's ``$7$``), kept beside our own salted hash.
        """
        self.broker_hasher = broker_hasher
        self.data_dir = Path(data_dir)
        if url is not None and not pg.is_postgres_url(url):
            self.data_dir = sqlite_dir(url)
        prepare_data_dir(self.data_dir)
        self.clock = clock or SystemClock()
        self.path = self.data_dir / DB_FILE
        self._apps: dict[str, tuple[float, App]] = {}
        self._settings: dict[str, tuple[float, dict[str, Any]]] = {}
        self._settings_changes = 0
        self.transition_listeners: list[TransitionListener] = []
        self.leases = LeaseRepository(self)
        self.tokens = TokenRepository(self)
        self.inbox = InboxRepository(self)
        self.endpoints = EndpointRepository(self)
        self.webhooks = WebhookRepository(self)
        self.stats = StatsRepository(self)
        self.console = ConsoleRepository(self)
        self.vendors = VendorRepository(self)
        self.tasks = TaskRepository(self)
        self.devices = DeviceRepository(self)
        self.apps = AppRepository(self)
        self.accounts = AccountRepository(self)
        self.messages = MessageRepository(self)
        self._worker: _GroupCommitter | None = None
        self._health = _WriteHealth()
        self.commit_stats = CommitStats()
        self.url = url if pg.is_postgres_url(url) else None
        if self.url is not None:
            self._open_postgres(self.url)
            return
        log.debug("opening the store %s", self.path)
        try:
            # Made 0600 before SQLite sees it: its -wal and -shm files take the database's mode.
            # Only a new file: closing a descriptor of a database this process already has open
            # (a second Store beside the server's) would drop every POSIX lock SQLite holds on it.
            os.close(os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE))
        except FileExistsError:
            pass
        except OSError as exc:
            raise unwritable(self.data_dir, exc) from exc
        for name in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm", KEY_FILE):
            _tighten(self.data_dir / name)
        try:
            self._sqlite = self._conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000
            )
        except sqlite3.Error as exc:
            raise _open_error(self.path, exc) from exc
        try:
            self._check_file()
            self._set_wal()
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._sealer = self._open_sealer()
            self.migrate()
        except sqlite3.Error as exc:
            self._conn.close()
            raise _open_error(self.path, exc) from exc
        except BaseException:
            self._conn.close()
            raise

    def _open_postgres(self, url: str) -> None:
        try:
            self._pg = self._conn = conn = pg.PgConnection(url)
        except StoreUnavailable as exc:
            raise StoreError(str(exc), code="store_unreachable") from exc
        try:
            fresh = self._sealed_sample() is None
            self._sealer = self._open_sealer()
            pg.migrate(conn)
            if fresh:
                self._claim_key()
        except pg.Error as exc:
            conn.close()
            raise StoreError(f"cannot open the store at {pg.redact(url)}: {exc}", code="store_error") from exc
        except BaseException:
            conn.close()
            raise

    def _claim_key(self) -> None:
        """A new PostgreSQL store: seal something with this data dir's key at once, then check
        the database holds what *this* key sealed. Processes of a cluster started together each
        find nothing sealed and would make a key of their own; the first to seal wins, the others
        are refused here (copy the winner's master.key) instead of failing every signed call later."""
        try:
            self.accounts.service_credentials()  # sealed now, or opened if another process sealed it first
        except InvalidTag:
            raise StoreError(
                f"another process created this store's master key first: copy its master.key into"
                f" {self.data_dir} (every process of one store needs the same key, docs/scale-out.md)",
                code="master_key_wrong",
            ) from None

    @property
    def engine(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return "sqlite" if self.url is None else "postgresql"

    def _check_file(self) -> None:
        """Refuse, before writing anything, a file that is not this program's store: another
        program's SQLite database, one cut short, or one of a newer mqttpush. (A 0-byte file is
        a new, empty database to SQLite: it becomes a new store.)"""
        wal = self.data_dir / f"{DB_FILE}-wal"
        # All in one read transaction. The version and the tables from one snapshot: read apart,
        # a process creating the store meanwhile could commit between them, and its new tables
        # without its version looked like another program's database. Then the snapshot's page
        # count, then the WAL: frames the snapshot uses keep the WAL in place until it ends, so
        # an empty or missing WAL means every page of the snapshot is in the file; another
        # process writing meanwhile cannot make a whole file look cut short.
        self._conn.execute("BEGIN")
        try:
            version = self.schema_version()
            tables = self._conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[
                0
            ]
            if version == 0 and tables:
                raise StoreError(
                    f"{self.path} is another program's database, not an mqttpush store", code="store_foreign"
                )
            known = _migrations()[-1][0]
            if version > known:
                raise StoreError(
                    f"{self.path} has schema {version}, newer than this mqttpush ({known})",
                    code="schema_too_new",
                )
            pages = int(self._conn.execute("PRAGMA page_count").fetchone()[0])
            page_size = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
            size = self.path.stat().st_size
            if (not wal.exists() or wal.stat().st_size == 0) and size < pages * page_size:
                raise StoreError(
                    f"{self.path} is cut short: {size} bytes of {pages * page_size}", code="store_corrupt"
                )
        finally:
            self._conn.execute("COMMIT")

    def _open_sealer(self) -> _Sealer:
        """The master key, checked against a secret of the store: a new key only for a store with
        nothing sealed, a wrong one refused here rather than as 500s on every signed call."""
        sample = self._sealed_sample()
        sealer = _Sealer(self.data_dir / KEY_FILE, create=sample is None)
        _tighten(self.data_dir / KEY_FILE)
        if sample is not None:
            try:
                sealer.open(sample)
            except InvalidTag:
                raise StoreError(
                    f"{self.data_dir / KEY_FILE} is not the key this store's secrets were sealed with;"
                    " restore the right one from a backup of this data dir",
                    code="master_key_wrong",
                ) from None
        return sealer

    def _sealed_sample(self) -> bytes | None:
        """One sealed secret of the store, or None if it has none yet."""
        tables = self._tables()
        for table, column in _SEALED_COLUMNS:
            if table not in tables:
                continue
            # A store not migrated yet may lack the column (vendor tokens were clear before 0007).
            columns = self._columns(table)
            if column in columns:
                row = self._conn.execute(f"SELECT {column} FROM {table} LIMIT 1").fetchone()
                if row is not None:
                    return bytes(row[0])
        return None

    def _tables(self) -> set[str]:
        if self.url is not None:
            sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        else:
            sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
        return {r[0] for r in self._conn.execute(sql)}

    def _columns(self, table: str) -> set[str]:
        if self.url is not None:
            sql = (
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = ?"
            )
        else:
            sql = "SELECT name FROM pragma_table_info(?)"
        return {r[0] for r in self._conn.execute(sql, (table,))}

    def _set_wal(self) -> None:
        # Switching a brand-new file to WAL needs a moment alone with it; SQLite does not wait
        # on the busy handler for that, so a process starting beside another one retries, for a
        # bounded time. Any other refusal (read-only, damaged) is final at once.
        deadline = time.monotonic() + _WAL_SWITCH_SECONDS
        pause = 0.005
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
                if code not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or time.monotonic() >= deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.05)

    # --- plumbing ---------------------------------------------------------------------------

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one store call on the store thread and await its result (after its commit)."""
        if self._worker is None:
            self._worker = _GroupCommitter(self._conn, self._health, self.commit_stats)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._worker.submit(functools.partial(fn, *args, **kwargs), loop, future)
        return await future

    @property
    def write_failure(self) -> StoreUnavailable | None:
        """Why the last write through :meth:`run` failed, until one commits again (None: fine)."""
        return self._health.failure

    async def check_writable(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store can write now (a small real write);
        a success clears :attr:`write_failure`."""
        if self.url is not None:
            await self.run(functools.partial(pg.probe, self._pg))
        else:
            await self.run(functools.partial(_probe_write, self._conn, self.data_dir))
        self._health.failure = None

    async def app(self, app_key: str) -> App | None:
        """``apps.get_app``, cached in memory for the hot path (every signed request names its app).
        Apps only change by another process (``app create``), which a miss finds at once."""
        hit = self._apps.get(app_key)
        if hit is not None and _fresh(hit[0], self.clock.now()):
            return hit[1]
        app = await self.run(self.apps.get_app, app_key)
        if app is not None:
            self._apps[app_key] = (self.clock.now(), app)
        return app

    async def settings(self, app_key: str) -> dict[str, Any]:
        """``apps.app_settings``, cached in memory: a change through this store is seen at once,
        one made by another process within ``CACHE_SECONDS``."""
        hit = self._settings.get(app_key)
        if hit is None or not _fresh(hit[0], self.clock.now()):
            changes = self._settings_changes
            hit = (self.clock.now(), await self.run(self.apps.app_settings, app_key))
            if changes == self._settings_changes:  # no write overtook the read: safe to keep
                self._settings[app_key] = hit
        return dict(hit[1])

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        self._conn.close()

    def _tx(self) -> Transaction:
        """``with store._tx():`` wraps a write in BEGIN IMMEDIATE … COMMIT (rollback on error)."""
        return Transaction(self._conn)

    def schema_version(self) -> int:
        if self.url is not None:
            return pg.schema_version(self._pg)
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        """Apply the numbered migrations this database has not seen yet."""
        if self.url is not None:
            return pg.migrate(self._pg)
        known = _migrations()
        if known and self.schema_version() == known[-1][0]:
            return  # up to date: opening needs no write lock, so a busy writer cannot hold it up
        # What 0007 seals clear vendor tokens with; secure_delete zeroes the pages a migration
        # frees, so no clear secret stays behind in them.
        sqlite = self._sqlite
        sqlite.create_function("mqttpush_token_hash", 1, vendor_token_hash, deterministic=True)
        sqlite.create_function("mqttpush_seal", 1, self._seal)
        secure_delete = self._conn.execute("PRAGMA secure_delete").fetchone()[0]
        self._conn.execute("PRAGMA secure_delete = ON")
        try:
            self._apply(known)
        finally:
            self._conn.execute(f"PRAGMA secure_delete = {int(secure_delete)}")
        # Copy the zeroed pages into the database file now, not at some later checkpoint. (Not
        # TRUNCATE: an empty WAL makes a store opening beside this one check the file's size.)
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _apply(self, known: list[tuple[int, str]]) -> None:
        for version, sql in known:
            # Re-read the version inside the write lock: another process may have migrated meanwhile.
            with self._tx():
                current = self.schema_version()
                if known and current > known[-1][0]:
                    raise StoreError(
                        f"{self.path} has schema {current}, newer than this mqttpush ({known[-1][0]})",
                        code="schema_too_new",
                    )
                if version <= current:
                    continue
                for statement in split_statements(sql):
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version={version}")

    def _seal(self, plain: str) -> bytes:
        return self._sealer.seal(plain)

    def _unseal(self, sealed: bytes) -> str:
        return self._sealer.open(sealed)

    # --- delivery history: what the repositories write through ------------------------------

    def _insert_deliveries(
        self, msg_id: str, device_ids: list[str], now: float, *, new_message: bool = False
    ) -> list[str]:
        """Insert ``accepted`` deliveries that do not exist yet; returns the device ids inserted.
        ``new_message``: the message was inserted in this transaction, so none can exist."""
        existing: set[str] = set()
        for chunk, marks in [] if new_message else chunks(device_ids):
            existing.update(
                r[0]
                for r in self._conn.execute(
                    f"SELECT device_id FROM deliveries WHERE msg_id = ? AND device_id IN ({marks})",
                    (msg_id, *chunk),
                )
            )
        fresh = [d for d in dict.fromkeys(device_ids) if d not in existing]
        accepted = DeliveryState.ACCEPTED.value
        self._conn.executemany(
            "INSERT INTO deliveries (msg_id, device_id, channel, state, updated_at) VALUES (?, ?, 'mqtt', ?, ?)",
            [(msg_id, d, accepted, now) for d in fresh],
        )
        self._events([(msg_id, d, accepted, now, None) for d in fresh])
        return fresh

    def _events(self, rows: list[Event]) -> None:
        """Write delivery history rows ``(msg_id, device_id, state, at, detail)`` and show them,
        inside the same transaction, to every transition listener (statistics, webhooks)."""
        if not rows:
            return
        self._conn.executemany(
            "INSERT INTO delivery_events (msg_id, device_id, state, at, detail) VALUES (?, ?, ?, ?, ?)", rows
        )
        for listener in self.transition_listeners:
            listener(self._conn, rows)

    def _record(
        self, msg_id: str, device_id: str, state: DeliveryState, at: float, detail: str | None
    ) -> None:
        self._conn.execute(
            "UPDATE deliveries SET state = ?, updated_at = ?, error = coalesce(?, error)"
            " WHERE msg_id = ? AND device_id = ?",
            (
                state.value,
                at,
                detail if state in (DeliveryState.FAILED, DeliveryState.DROPPED) else None,
                msg_id,
                device_id,
            ),
        )
        self._events([(msg_id, device_id, state.value, at, detail)])
