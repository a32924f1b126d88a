"""What the store's repositories may use of :class:`~mqttpush.store.store.Store` (declared once
here), and :class:`Repository`, the base of each aggregate's queries (``store.devices``,
``store.messages``…)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from mqttpush.clock import Clock
from mqttpush.models import App, DeliveryState
from mqttpush.store.tx import Connection, Transaction

if TYPE_CHECKING:
    from mqttpush.store.devices import DeviceRepository
    from mqttpush.store.webhooks import WebhookRepository

Event = tuple[str, str, str, float, str | None]
"""One delivery history row: ``(msg_id, device_id, state, at, detail)``."""

TransitionListener = Callable[[Connection, list[Event]], None]
"""Called on the store thread, inside the writing transaction, with the history rows just written
(in the order written). It may write rows of its own on the connection (a webhook outbox) or only
count in memory (statistics); it must be quick and must not raise."""


def chunks(items: Sequence[str], size: int = 500) -> Iterator[tuple[list[str], str]]:
    """``(chunk, "?,?,…")`` pieces of ``items`` for ``IN (…)`` queries (SQLite caps bound parameters)."""
    for i in range(0, len(items), size):
        chunk = list(items[i : i + size])
        yield chunk, ",".join("?" * len(chunk))


class StoreCore:
    """The store as its repositories see it: the connection, the transaction, sealing, the
    delivery-history helpers every aggregate writes through, the app caches' invalidation, and
    the repositories one aggregate's queries call on (webhook events, a message's devices)."""

    _conn: Connection
    _apps: dict[str, tuple[float, App]]
    _settings: dict[str, tuple[float, dict[str, Any]]]
    _settings_changes: int
    clock: Clock
    broker_hasher: Callable[[str], str] | None
    transition_listeners: list[TransitionListener]
    url: str | None
    devices: DeviceRepository
    webhooks: WebhookRepository

    def _tx(self) -> Transaction:
        raise NotImplementedError

    def _record(
        self, msg_id: str, device_id: str, state: DeliveryState, at: float, detail: str | None
    ) -> None:
        raise NotImplementedError

    def _events(self, rows: list[Event]) -> None:
        raise NotImplementedError

    def _insert_deliveries(
        self, msg_id: str, device_ids: list[str], now: float, *, new_message: bool = False
    ) -> list[str]:
        raise NotImplementedError

    def _seal(self, plain: str) -> bytes:
        raise NotImplementedError

    def _unseal(self, sealed: bytes) -> str:
        raise NotImplementedError


class Repository:
    """One aggregate's queries (tokens, webhooks, statistics…) over the store's connection and
    transaction layer. A store exposes each as an attribute (``store.tokens``); callers on the
    event loop go through the store thread: ``await store.run(store.tokens.create, …)``.

    SQL here is written for both engines the store will run on (SQLite now, PostgreSQL next):
    ``?`` placeholders, ``INSERT … ON CONFLICT … DO NOTHING|DO UPDATE`` (never ``INSERT OR``),
    ``RETURNING`` where needed, no rowid, times as REAL unix seconds from ``self.clock``.
    """

    def __init__(self, store: StoreCore) -> None:
        self._store = store

    @property
    def _conn(self) -> Connection:
        return self._store._conn

    @property
    def clock(self) -> Clock:
        return self._store.clock

    def _tx(self) -> Transaction:
        """``with self._tx() as conn:`` one write transaction (a savepoint inside a group commit)."""
        return self._store._tx()

    def _skip_locked(self, of: str = "") -> str:
        """For the inner SELECT of a claim (``UPDATE … WHERE key IN (SELECT … LIMIT ?<here>)``): on
        PostgreSQL `` FOR UPDATE [OF t] SKIP LOCKED``, so concurrent claimers pass over the rows
        another is taking instead of queueing behind it; nothing on SQLite (one writer)."""
        if self._store.url is None:
            return ""
        return f" FOR UPDATE{' OF ' + of if of else ''} SKIP LOCKED"

    def _record(
        self, msg_id: str, device_id: str, state: DeliveryState, at: float, detail: str | None
    ) -> None:
        """Move one delivery to ``state`` and write its history row (no forward check)."""
        self._store._record(msg_id, device_id, state, at, detail)

    def _events(self, rows: list[Event]) -> None:
        """Write delivery history rows and show them to the transition listeners."""
        self._store._events(rows)

    def _insert_deliveries(
        self, msg_id: str, device_ids: list[str], now: float, *, new_message: bool = False
    ) -> list[str]:
        """Insert the ``accepted`` deliveries that do not exist yet; returns the device ids inserted."""
        return self._store._insert_deliveries(msg_id, device_ids, now, new_message=new_message)

    def _seal(self, plain: str) -> bytes:
        return self._store._seal(plain)

    def _unseal(self, sealed: bytes) -> str:
        return self._store._unseal(sealed)
