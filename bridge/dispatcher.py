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
_CONCURRENCY = 256


@dataclass(frozen=True, slots=True)
class Outbound:
    """A committed message and the devices whose deliveries still have to be published."""

    msg_id: str
    app_key: str
    payload: bytes
    device_ids: tuple[str, ...]
    broadcast: bool = False
    """Publish once on the app's broadcast topic instead of once per device."""


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
        broadcasts = {p.msg_id: p for p in pending if p.fanout == "topic"}
        for p in broadcasts.values():
            await self._publish_broadcast(Outbound(p.msg_id, p.app_key, p.payload, (), broadcast=True))
        inbox = [p for p in pending if p.fanout != "topic"]
        for p in inbox:
            await self._publisher.publish(
                topics.inbox_topic(p.app_key, p.device_id, p.msg_id), p.payload, qos=1, retain=True
            )
        fresh = [(p.msg_id, p.device_id) for p in inbox if p.state is DeliveryState.ACCEPTED]
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
                if out.broadcast:
                    await self._publish_broadcast(out)
                    continue
                for i in range(0, len(out.device_ids), _CONCURRENCY):
                    chunk = out.device_ids[i : i + _CONCURRENCY]
                    # Many publishes in flight at once: over a socket (split mode) each waits for its PUBACK.
                    results = await asyncio.gather(
                        *(self._publish_inbox(out, d) for d in chunk), return_exceptions=True
                    )
                    for device_id, result in zip(chunk, results, strict=True):
                        if isinstance(result, BaseException):
                            # The delivery stays `accepted` in the store; the next start re-publishes it.
                            log.error(
                                "publish failed msg_id=%s device_id=%s: %r", out.msg_id, device_id, result
                            )
                        else:
                            published.append((out.msg_id, device_id))
            if published:
                await self._store.run(self._store.transition, published, DeliveryState.PUBLISHED)
            if self._queue.empty():
                self._idle.set()

    async def _publish_inbox(self, out: Outbound, device_id: str) -> None:
        topic = topics.inbox_topic(out.app_key, device_id, out.msg_id)
        await self._publisher.publish(topic, out.payload, qos=1, retain=True)

    async def _publish_broadcast(self, out: Outbound) -> None:
        try:
            await self._publisher.publish(
                topics.broadcast_topic(out.app_key, out.msg_id), out.payload, qos=1, retain=True
            )
        except Exception:
            log.exception("broadcast publish failed msg_id=%s", out.msg_id)
            return
        await self._store.run(self._store.publish_all, out.msg_id)
