"""Time-driven work of the bridge: TTL expiry today."""

from __future__ import annotations

import asyncio
import logging

from bridge.publisher import Publisher
from mqttpush import topics
from mqttpush.store import Store

log = logging.getLogger("mqttpush.scheduler")


class Scheduler:
    def __init__(self, store: Store, publisher: Publisher, interval: float = 5.0) -> None:
        self._store = store
        self._publisher = publisher
        self._interval = interval

    async def sweep(self) -> int:
        """Expire deliveries past their TTL and clear their retained inbox topics."""
        inboxes, broadcasts = await self._store.run(self._store.expire_due)
        for app_key, device_id, msg_id in inboxes:
            await self._publisher.clear_retained(topics.inbox_topic(app_key, device_id, msg_id))
        for app_key, msg_id in broadcasts:
            await self._publisher.clear_retained(topics.broadcast_topic(app_key, msg_id))
        if inboxes or broadcasts:
            log.info("expired inboxes=%d broadcasts=%d", len(inboxes), len(broadcasts))
        return len(inboxes) + len(broadcasts)

    async def run(self) -> None:
        while True:
            await self.sweep()
            await asyncio.sleep(self._interval)
