"""A bridge's side of the cluster: publishing through NATS, and the client publishes nodes send up.

:class:`NatsPublisher` has the shape of ``bridge.publisher.Publisher`` (the composition root hands
it to the bridge; this package does not import the bridge):

* an inbox message is a request on the device's subject; it resolves True once the node holding
  the device queued it to the session, False when no node holds the device ("no responders":
  the delivery stays pending in the store and goes out when the device subscribes anywhere).
  Requests are pipelined: every concurrent ``publish`` has its own in flight.
* a broadcast goes to the app's subject every node holds, any other topic (MQTT API results) to
  the route subject; both are flushed to the server before ``publish`` returns.
* clearing a retained topic does nothing: nodes keep no retained inbox, the store decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from mqttpush import topics
from mqttpush.cluster import wire
from mqttpush.cluster.link import NatsLink

log = logging.getLogger("mqttpush.cluster")

Uplink = Callable[[list[tuple[str, bytes]]], Awaitable[None]]
"""Takes a batch of client publishes (topic, payload) from a node; returns once they are handled."""

_TIMEOUTS = 3
"""Requests to one device that may time out while connected before it counts as not taken (a
node that holds the subject but does not answer: wedged, or killed a moment ago)."""


class NatsPublisher:
    def __init__(self, link: NatsLink, *, request_timeout: float = 5.0) -> None:
        self.link = link
        self.request_timeout = request_timeout
        self._sub: Subscription | None = None
        self._on_uplink: Uplink | None = None

    async def start(self, on_uplink: Uplink) -> None:
        """Connect and join the bridges' queue group for client publishes."""
        self._on_uplink = on_uplink
        await self.link.start()
        self._sub = await self.link.nc.subscribe(wire.UPLINK, queue=wire.UPLINK_QUEUE, cb=self._uplink)
        await self.link.nc.flush(timeout=5)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
        await self.link.close()

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        expires_at: float | None = None,
    ) -> bool | None:
        frame = wire.encode_publish(topic, payload, expires_at)
        parsed = topics.parse_topic(topic)
        if parsed is not None and parsed.kind is topics.TopicKind.INBOX and parsed.device is not None:
            return await self._request(wire.device_subject(parsed.app, parsed.device), frame, expires_at)
        if parsed is not None and parsed.kind is topics.TopicKind.BROADCAST:
            subject = wire.broadcast_subject(parsed.app)
        else:
            subject = wire.ROUTE
        await self._publish(subject, frame)
        return None

    async def clear_retained(self, topic: str) -> None:
        return None

    async def _request(self, subject: str, frame: bytes, expires_at: float | None) -> bool:
        timeouts = 0
        while True:
            try:
                reply = await self.link.nc.request(subject, frame, timeout=self.request_timeout)
            except nats.errors.NoRespondersError:
                return False
            except (nats.errors.Error, TimeoutError) as exc:
                # Lost with a NATS server, or a node that went away: ask again once connected.
                if expires_at is not None and expires_at <= time.time():
                    return False
                if self.link.is_connected:
                    timeouts += 1
                    if timeouts >= _TIMEOUTS:
                        log.warning("no answer for %s: left pending in the store (%r)", subject, exc)
                        return False
                await self.link.wait_connected()
                continue
            return reply.data == wire.TAKEN

    async def _publish(self, subject: str, frame: bytes) -> None:
        while True:
            try:
                await self.link.nc.publish(subject, frame)
                await self.link.nc.flush(timeout=max(1, round(self.request_timeout)))
                return
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("publish on %s not confirmed, again: %r", subject, exc)
                await self.link.wait_connected()
                await asyncio.sleep(0.05)

    async def _uplink(self, msg: Msg) -> None:
        try:
            items = wire.decode_batch(msg.data)
        except ValueError:
            log.warning("bad client publish batch on %s", msg.subject)
            await msg.respond(wire.NOT_TAKEN)
            return
        assert self._on_uplink is not None
        await self._on_uplink(items)
        await msg.respond(wire.TAKEN)
