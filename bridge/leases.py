"""This bridge's lease in the store, and taking over the work of bridges whose lease lapsed.

Several bridges may work over one store (docs/scale-out.md, "Leases"). Each renews its row every
third of the lease; one that stops renewing (killed, frozen, cut off from the store) is taken over
by the first live bridge to notice, which re-handles everything the store still calls pending
(what the dead bridge had accepted but not published, released from a hold, or was retrying with
a vendor) and claims the tasks it was walking. A bridge that stops cleanly hands its lease over at
once. Tasks, scheduled sends and re-push timers have leases of their own (mqttpush/store/leases.py).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable

from mqttpush.clock import Clock
from mqttpush.store import Store

log = logging.getLogger("mqttpush.leases")

LEASE_SECONDS = 15.0
"""How long a bridge's lease (and a task's, a scheduled send's, a re-push's) lasts unrenewed: how
long the work of a dead bridge waits before another bridge takes it over."""


def new_owner() -> str:
    """An owner id for this bridge process: ``host/pid/random`` (unique even across restarts)."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


class BridgeLease:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        owner: str,
        seconds: float,
        on_takeover: Callable[[list[str]], Awaitable[None]],
        on_tick: Callable[[], Awaitable[object]],
    ) -> None:
        self._store = store
        self._clock = clock
        self.owner = owner
        self._seconds = seconds
        self._on_takeover = on_takeover
        self._on_tick = on_tick

    async def start(self, *, alone: bool = False) -> list[str]:
        """Take the lease; the lapsed leases of other bridges (``alone``: all of them, when no
        other bridge can be running) are taken over silently, since a starting bridge
        re-handles everything pending anyway. Returns their owners."""
        store = self._store
        await store.run(store.leases.heartbeat, self.owner, self._seconds)
        taken = await store.run(store.leases.take_over, self.owner, alone=alone)
        if taken:
            log.info("took over lapsed bridges at start owners=%s", ",".join(taken))
        return taken

    async def run(self) -> None:
        """Renew, take over lapsed bridges, claim free tasks; every third of the lease. An error
        propagates to the supervisor (bridge/supervisor.py), which runs this again."""
        store = self._store
        while True:
            await self._clock.sleep(self._seconds / 3)
            if not await store.run(store.leases.heartbeat, self.owner, self._seconds):
                log.warning("this bridge's lease had lapsed and was taken over owner=%s", self.owner)
            taken = await store.run(store.leases.take_over, self.owner)
            if taken:
                log.warning("taking over the work of lapsed bridges owners=%s", ",".join(taken))
                await self._on_takeover(taken)
            await self._on_tick()

    async def stop(self) -> None:
        """Hand the lease over: what this bridge leaves pending is taken over at once."""
        await self._store.run(self._store.leases.hand_over, self.owner)
