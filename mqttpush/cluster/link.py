"""One process's connection to the NATS cluster: reconnects for ever, tells who cares when it did."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client

from mqttpush.errors import StartupError

log = logging.getLogger("mqttpush.cluster")


class NatsLink:
    """``await link.start()``, then ``link.nc`` is a connected nats-py client.

    A server that goes away (even ``kill -9``) is left for another of ``servers`` (and of those the
    cluster announces) within ``reconnect_wait``; subscriptions are made again by nats-py, then
    ``on_reconnect`` runs (nodes re-send the inboxes of their devices: what was published while
    their subscriptions were missing waits in the store)."""

    def __init__(self, servers: list[str], name: str, *, reconnect_wait: float = 0.25) -> None:
        self.servers = servers
        self.name = name
        self._reconnect_wait = reconnect_wait
        self._nc: Client | None = None
        self._connected = asyncio.Event()
        self.on_reconnect: list[Callable[[], Awaitable[None]]] = []

    @property
    def nc(self) -> Client:
        assert self._nc is not None, "NatsLink.start() first"
        return self._nc

    @property
    def is_connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def start(self, timeout: float = 10.0) -> None:
        try:
            self._nc = await asyncio.wait_for(
                nats.connect(
                    servers=self.servers,
                    name=self.name,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=self._reconnect_wait,
                    connect_timeout=2,
                    ping_interval=5,
                    max_outstanding_pings=2,
                    error_cb=self._error,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                ),
                timeout,
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise StartupError(f"cannot reach NATS at {','.join(self.servers)}: {exc!r}") from None
        self._connected.set()
        log.info("NATS connected name=%s server=%s", self.name, self._nc.connected_url)

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()

    async def _error(self, exc: Exception) -> None:
        log.warning("NATS: %r", exc)

    async def _disconnected(self) -> None:
        self._connected.clear()
        log.warning("NATS disconnected name=%s", self.name)

    async def _reconnected(self) -> None:
        self._connected.set()
        log.info("NATS reconnected name=%s server=%s", self.name, self.nc.connected_url)
        for hook in self.on_reconnect:
            try:
                await hook()
            except Exception:
                log.exception("after a NATS reconnect")
