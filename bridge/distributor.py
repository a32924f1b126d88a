"""The UnifiedPush / Web Push distributor's delivery side (docs/webpush.md): a message an
application server pushed to an endpoint becomes an ordinary message to the endpoint's device
(committed first, then published by the dispatcher), so receipts, expiry and status work for it
as for any other push.

- ``Topic``: a message still waiting for the device with the same topic on the same endpoint is
  cancelled (``replaced``) and its retained inbox copy cleared, in the transaction that commits
  the new one (RFC 8030, replacing push messages).
- ``TTL: 0``: delivered only if the device is connected now; otherwise dropped, nothing stored
  (RFC 8030, push message time-to-live).
- ``Urgency: high`` overtakes the other messages in the dispatcher's queue.

Up messages go over MQTT only: the pushed bytes are another app's, encrypted for the device, and
do not fit a vendor channel's notification payload.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from bridge.dispatcher import Dispatcher, Outbound
from bridge.policy import SendPolicy
from bridge.publisher import Publisher
from mqttpush import envelope, ids, topics
from mqttpush.clock import Clock
from mqttpush.errors import NotFound, Overloaded
from mqttpush.store import Store
from mqttpush.store.endpoints import Endpoint

URGENCIES = ("very-low", "low", "normal", "high")
TTL_ZERO_WINDOW = 30.0
"""A ``TTL: 0`` message for a connected device stays in its inbox this long at most (seconds):
enough for it to arrive, and it is never kept for a later connection beyond that."""


@dataclass(frozen=True, slots=True)
class UpMessage:
    """What an application server pushed, its headers already checked."""

    endpoint: Endpoint
    payload: bytes
    encoding: str | None
    ttl: int
    urgency: str = "normal"
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    msg_id: str
    ttl: int
    """The TTL applied (the ``TTL`` response header)."""
    stored: bool
    """False for ``TTL: 0`` to a device that is not connected: dropped at once."""


class Distributor:
    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        publisher: Publisher,
        clock: Clock,
        max_publish_lag: float = 1.0,
    ) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._publisher = publisher
        self._clock = clock
        self._max_publish_lag = max_publish_lag

    async def deliver(self, up: UpMessage) -> Accepted:
        """Commit the message to the store, then hand it to the dispatcher (or drop a ``TTL: 0``
        message for a device that is not connected). Raises ``endpoint_gone`` if the endpoint was
        removed meanwhile, 503 ``overloaded`` while the dispatcher is too far behind."""
        store, end = self._store, up.endpoint
        self._admit()
        now = self._clock.now()
        msg_id = ids.new_msg_id(now)
        if up.ttl == 0:
            device = await store.run(store.devices.get_device, end.device_id)
            if device is None:
                raise NotFound("the endpoint's device is gone", code="unknown_endpoint")
            if not device.online:
                return Accepted(msg_id, 0, stored=False)
        expires_at = now + (up.ttl or TTL_ZERO_WINDOW)
        payload = envelope.up_envelope(
            msg_id=msg_id,
            app=end.app_key,
            endpoint_id=end.endpoint_id,
            instance=end.instance,
            payload=up.payload,
            encoding=up.encoding,
            sent_at=now,
            expires_at=expires_at,
        )
        send = SendPolicy(priority=0 if up.urgency == "high" else 1, strategy="mqtt", ttl=up.ttl)
        policy = {"ttl": up.ttl, "strategy": "mqtt", "urgency": up.urgency}
        if up.topic is not None:
            policy["topic"] = up.topic
        commit = functools.partial(
            store.messages.accept_message,
            msg_id=msg_id,
            app_key=end.app_key,
            kind="up",
            target={"endpoint": end.endpoint_id},
            envelope=payload,
            policy=policy,
            expires_at=expires_at,
            device_ids=[end.device_id],
            priority=send.priority,
        )
        replaced = await store.run(store.endpoints.accept, end.endpoint_id, msg_id, up.topic, commit)
        await self.clear(end.app_key, end.device_id, replaced)
        self._dispatcher.submit(Outbound(msg_id, end.app_key, payload, (end.device_id,), policy=send))
        return Accepted(msg_id, up.ttl, stored=True)

    async def clear(self, app_key: str, device_id: str, msg_ids: list[str]) -> None:
        """Take cancelled messages out of the device's retained inbox."""
        for msg_id in msg_ids:
            await self._publisher.clear_retained(topics.inbox_topic(app_key, device_id, msg_id))

    def _admit(self) -> None:
        bound, lag = self._max_publish_lag, self._dispatcher.lag()
        if bound > 0 and lag > bound:
            raise Overloaded(
                f"pushes wait {lag:.1f}s to be published (bound {bound:g}s); retry later",
                retry_after=max(1, math.ceil(lag)),
            )
