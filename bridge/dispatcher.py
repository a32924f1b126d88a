"""From committed deliveries to MQTT publishes, and back again after a restart."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from bridge.publisher import Publisher
from mqttpush import topics
from mqttpush.models import DeliveryState
from mqttpush.store import Store

log = logging.getLogger("mqttpush.dispatcher")

_BATCH = 500


@dataclass(frozen=True, slots=True)
class Outbound:
    """A committed message and the devices whose deliveries still have to be published."""

    msg_id: str
    app_key: str
    payload: bytes
    device_ids: tuple[str, ...]


class Dispatcher:
    """Publishes each delivery QoS 1, retained, to the device's inbox topic, then records it.

    Nothing is lost if the process dies between commit and publish: :meth:`recover` re-publishes
    every undelivered, unexpired delivery from the store at start.
    """

    def __init__(self, store: Store, publisher: Publisher) -> None:
        self._store = store
        self._publisher = publisher
        self._queue: asyncio.Queue[Outbound] = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()

    def submit(self, out: Outbound) -> None:
        self._idle.clear()
        self._queue.put_nowait(out)

    async def drained(self) -> None:
        """Wait until everything submitted so far is published and recorded."""
        await self._idle.wait()

    async def recover(self) -> int:
        """Re-publish what the store says is not delivered yet; returns how many deliveries."""
        pending = await self._store.run(self._store.pending_deliveries)
        for p in pending:
            await self._publisher.publish(
                topics.inbox_topic(p.app_key, p.device_id, p.msg_id), p.payload, qos=1, retain=True
            )
        fresh = [(p.msg_id, p.device_id) for p in pending if p.state is DeliveryState.ACCEPTED]
        if fresh:
            await self._store.run(self._store.transition, fresh, DeliveryState.PUBLISHED)
        if pending:
            log.info("recovered deliveries=%d", len(pending))
        return len(pending)

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < _BATCH:
                batch.append(self._queue.get_nowait())
            published: list[tuple[str, str]] = []
            for out in batch:
                for device_id in out.device_ids:
                    try:
                        await self._publisher.publish(
                            topics.inbox_topic(out.app_key, device_id, out.msg_id),
                            out.payload,
                            qos=1,
                            retain=True,
                        )
                    except Exception:
                        # The delivery stays `accepted` in the store; the next start re-publishes it.
                        log.exception("publish failed msg_id=%s device_id=%s", out.msg_id, device_id)
                        continue
                    published.append((out.msg_id, device_id))
            if published:
                await self._store.run(self._store.transition, published, DeliveryState.PUBLISHED)
            if self._queue.empty():
                self._idle.set()
