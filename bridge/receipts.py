"""Receipts devices publish on their ``r`` topic: parsed (pure), stored, and the inbox cleared."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from bridge.publisher import Publisher
from mqttpush import ids, topics
from mqttpush.models import ReceiptEvent
from mqttpush.store import Store

log = logging.getLogger("mqttpush.receipts")

_BATCH = 1000
_CLEAR_CONCURRENCY = 256  # inbox clears in flight at once, as the dispatcher publishes


@dataclass(frozen=True, slots=True)
class Receipt:
    app_key: str
    device_id: str
    msg_id: str
    event: ReceiptEvent


def parse_receipt(topic: str, payload: bytes) -> Receipt | None:
    """``{"id": msg_id, "event": "arrived"|"opened"|"dismissed"}`` on ``mqttpush/{app}/d/{device}/r``."""
    parsed = topics.parse_topic(topic)
    if parsed is None or parsed.kind is not topics.TopicKind.RECEIPT or parsed.device is None:
        return None
    try:
        obj = json.loads(payload)
        event = ReceiptEvent(obj["event"])
        msg_id = obj["id"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    if not isinstance(msg_id, str) or not ids.is_valid_id(msg_id):
        return None
    return Receipt(parsed.app, parsed.device, msg_id, event)


class Receipts:
    """Applies receipts in arrival order on one task, so the event loop never waits on SQLite."""

    def __init__(self, store: Store, publisher: Publisher) -> None:
        self._store = store
        self._publisher = publisher
        self._queue: asyncio.Queue[Receipt] = asyncio.Queue()
        self._retry: list[Receipt] = []
        """A batch the store refused, applied first when :meth:`run` is started again."""
        self.handled = 0
        self.fed = 0
        """Receipts queued so far: once ``handled`` reaches it, every one of them is stored."""
        self._handled_changed = asyncio.Condition()

    def backlog(self) -> int:
        """Receipts received and not yet stored (GET /metrics)."""
        return self._queue.qsize() + len(self._retry)

    async def wait_handled(self, count: int) -> None:
        """Wait until ``count`` receipts in total have been stored (or dropped as unknown)."""
        async with self._handled_changed:
            await self._handled_changed.wait_for(lambda: self.handled >= count)

    def feed(self, topic: str, payload: bytes) -> None:
        receipt = parse_receipt(topic, payload)
        if receipt is None:
            log.info("ignored malformed receipt topic=%s bytes=%d", topic, len(payload))
            return
        self._queue.put_nowait(receipt)
        self.fed += 1

    async def run(self) -> None:
        """Apply receipts until cancelled. A batch the store refuses is kept for the next run (the
        supervisor, bridge/supervisor.py, starts this again after a backoff) and raised."""
        while True:
            batch, self._retry = self._retry or [await self._queue.get()], []
            while not self._queue.empty() and len(batch) < _BATCH:
                batch.append(self._queue.get_nowait())
            # Coalesced: one transaction for every receipt that arrived meanwhile.
            try:
                fanouts = await self._store.run(
                    self._store.messages.apply_receipts,
                    [(r.app_key, r.device_id, r.msg_id, r.event) for r in batch],
                )
            except BaseException:
                self._retry = batch
                raise
            clears: list[str] = []
            for r, fanout in zip(batch, fanouts, strict=True):
                if fanout == "inbox":
                    # Any receipt proves the device has the message: it must not come back on reconnect.
                    clears.append(topics.inbox_topic(r.app_key, r.device_id, r.msg_id))
                elif fanout is None:
                    log.info(
                        "receipt for unknown delivery device_id=%s msg_id=%s",
                        r.device_id,
                        r.msg_id,
                        extra={"msg_id": r.msg_id, "device_id": r.device_id, "app_key": r.app_key},
                    )
            await self._clear(list(dict.fromkeys(clears)))
            self.handled += len(batch)
            async with self._handled_changed:
                self._handled_changed.notify_all()

    async def _clear(self, inboxes: list[str]) -> None:
        """Clear retained inbox topics, many at once (over a socket, split mode, each waits for its
        PUBACK). A failed clear is logged and the others go on: the receipts are stored already,
        and a copy that comes back is one the device de-duplicates by ``id``."""
        for i in range(0, len(inboxes), _CLEAR_CONCURRENCY):
            chunk = inboxes[i : i + _CLEAR_CONCURRENCY]
            results = await asyncio.gather(
                *(self._publisher.clear_retained(t) for t in chunk), return_exceptions=True
            )
            for topic, result in zip(chunk, results, strict=True):
                if isinstance(result, BaseException):
                    log.error("inbox clear failed topic=%s: %r", topic, result)
