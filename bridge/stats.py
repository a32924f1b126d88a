"""Statistics (docs/statistics.md): counting starts with the bridge, and the counts held in memory
are written to the store every few seconds and once more on stop."""

from __future__ import annotations

import asyncio
import logging

from mqttpush.store import Store
from mqttpush.store.stats import Retention

log = logging.getLogger("mqttpush.stats")


class StatsFlusher:
    """``start`` before anything is delivered; ``run`` as a supervised loop; ``close`` on stop."""

    def __init__(self, store: Store, interval: float, retention: Retention) -> None:
        self._store = store
        self._interval = max(0.1, interval)
        self._retention = retention

    async def start(self) -> None:
        await self._store.run(self._store.stats.enable, self._retention)

    async def run(self) -> None:
        # Real seconds, not the delivery clock: how often to write is an operational cadence.
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> int:
        """Write what was counted since the last flush; returns the minute rows written."""
        return await self._store.run(self._store.stats.flush)

    async def close(self) -> None:
        """The last flush, after every loop that delivers has stopped."""
        try:
            await self.flush()
        except Exception as exc:  # the store refuses writes (disk full): the counts are lost, not the stop
            log.error("statistics not flushed on stop: %r", exc)
