"""A broker node of a cluster (``mqttpush broker --cluster nats://… --node-id N``, docs/scale-out.md).

What the node does beyond a single broker:

* **SUBSCRIBE** to a device's inbox filter: the node first holds the device's NATS subject (and
  waits until the server has it), then sends the device its pending inbox from the store, and once
  more after ``settle`` seconds (interest reaches the other NATS servers of the cluster a moment
  later; a push sent in that moment found no responder and waits in the store). A broadcast filter
  gets the app's live broadcasts from the store.
* **Live pushes** come as requests on the device's subject; the node queues the QoS 1 PUBLISH to
  the session, then answers ``1`` (taken); ``0`` if the device is not subscribed here any more.
  Broadcasts and other service publishes come on subjects every node holds.
* **CONNECT** announces ``(connect time, node id)`` on the device's session subject; a node holding
  an older session of that device closes it (no Will, no presence change). Two CONNECTs at once
  on two nodes: each hears the other, the smaller key closes, one session is left.
* **Receipts, presence, MQTT API requests** the node's clients publish go to one bridge of the
  ``bridges`` queue group, in batches, kept and sent again until a bridge answered.
* After a NATS **reconnect** every device's inbox is sent again from the store (what was sent in
  this session already is skipped), as the node's subscriptions were missing meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from mqttpush import topics
from mqttpush.broker import PushBroker
from mqttpush.cluster import wire
from mqttpush.cluster.link import NatsLink
from mqttpush.store import Store
from mqttpush.topics import DeviceIdentity, Identity

log = logging.getLogger("mqttpush.cluster")

UPLINK_BATCH = 1000
UPLINK_LIMIT = 200_000
"""Client publishes kept for the bridges while none answers; beyond, the oldest are dropped (a
lost receipt costs a repeated message, which the device drops by id)."""
_SENT_MEMORY = 4096
"""Message ids sent to one session remembered, so a re-sync from the store does not repeat them."""


@dataclass(eq=False)
class _Held:
    """A device connected to this node."""

    identity: DeviceIdentity
    key: wire.SessionKey
    inbox: bool = False
    broadcast: bool = False
    sub: Subscription | None = None
    sent: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def note(self, msg_id: str) -> None:
        self.sent[msg_id] = None
        if len(self.sent) > _SENT_MEMORY:
            self.sent.popitem(last=False)


class _Sink:
    """Stands in for the future of a nats-py subscription: each message is handed to ``handle``
    inline, with no task and queue per subscription (a node holds one subject per device)."""

    __slots__ = ("_handle",)

    def __init__(self, handle: Callable[[Msg], None]) -> None:
        self._handle = handle

    def cancelled(self) -> bool:
        return False

    def set_result(self, msg: Msg) -> None:
        self._handle(msg)


class ClusterNode:
    def __init__(
        self,
        link: NatsLink,
        broker: PushBroker,
        store: Store,
        node_id: str,
        *,
        settle: float = 1.0,
        uplink_timeout: float = 5.0,
    ) -> None:
        self.link = link
        self.broker = broker
        self.store = store
        self.node_id = node_id
        self.settle = settle
        self.uplink_timeout = uplink_timeout
        self._held: dict[str, _Held] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._replies: list[tuple[str, bytes]] = []
        self._replies_ready = asyncio.Event()
        self._uplink: list[tuple[str, bytes]] = []
        self._uplink_ready = asyncio.Event()
        self._uplink_idle = asyncio.Event()
        self._uplink_idle.set()
        self._workers: list[asyncio.Task[None]] = []
        self._subs: list[Subscription] = []
        self.taken_over = 0
        """Sessions closed here because their device connected again on another node."""

    # --- lifetime ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Hold the node-wide subjects and hook into the broker (before it takes connections)."""
        nc = self.link.nc
        self._subs = [
            await nc.subscribe(wire.BROADCAST_ALL, cb=self._on_service_publish),
            await nc.subscribe(wire.ROUTE, cb=self._on_service_publish),
            await nc.subscribe(wire.SESSION_ALL, cb=self._on_session),
        ]
        await nc.flush(timeout=5)
        self.link.on_reconnect.append(self._resync_all)
        self.broker.on_subscribe = self.subscribed
        for topic_filter in (topics.RECEIPT_FILTER, topics.PRESENCE_FILTER, topics.API_PUSH_FILTER):
            self.broker.tap(topic_filter, self._tap)
        self._workers = [
            asyncio.create_task(self._send_replies(), name="cluster-replies"),
            asyncio.create_task(self._send_uplink(), name="cluster-uplink"),
        ]

    async def stop(self) -> None:
        """Hand what clients published to a bridge (a few seconds at most), then let go."""
        if self.link.is_connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._uplink_idle.wait(), self.uplink_timeout)
        for task in [*self._workers, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._workers, *self._tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cluster node task failed: %r", task.exception())

    # --- broker hooks -----------------------------------------------------------------------------

    def connected(self, device: DeviceIdentity) -> None:
        """A device's connection started here (CONNACK sent)."""
        key = wire.SessionKey(time.time(), self.node_id)
        old = self._held.get(device.device)
        held = _Held(device, key)
        if old is not None:  # it reconnected to this node: keep its subject, send its inbox afresh
            held.sub, old.sub = old.sub, None
        self._held[device.device] = held
        self._spawn(self._announce(device, key))
        filters = self.broker.subscriptions_of(device.device)
        if filters:  # a resumed session subscribes no more: it has its filters from before
            self.subscribed(device, filters)

    def gone(self, device: DeviceIdentity) -> None:
        """A device's connection here ended (not taken over)."""
        held = self._held.pop(device.device, None)
        if held is not None:
            self._release(held)

    def subscribed(self, device: DeviceIdentity, filters: list[str]) -> None:
        held = self._held.get(device.device)
        if held is None:
            return
        inbox = topics.inbox_filter(device.app, device.device) in filters
        broadcast = topics.broadcast_filter(device.app) in filters
        held.inbox |= inbox
        held.broadcast |= broadcast
        if inbox or broadcast:
            self._spawn(self._watch(held))

    def _tap(self, topic: str, payload: bytes, _who: Identity) -> None:
        self._uplink.append((topic, payload))
        self._uplink_idle.clear()
        if len(self._uplink) > UPLINK_LIMIT:
            del self._uplink[: len(self._uplink) - UPLINK_LIMIT]
            log.warning("no bridge answers: oldest client publishes dropped")
        self._uplink_ready.set()

    # --- the device's inbox -----------------------------------------------------------------------

    async def _watch(self, held: _Held) -> None:
        if held.inbox and held.sub is None:
            device = held.identity
            sub = await self.link.nc.subscribe(
                wire.device_subject(device.app, device.device),
                future=cast(Any, _Sink(self._on_device_request)),
            )
            if self._held.get(device.device) is not held:
                await sub.unsubscribe()
                return
            held.sub = sub
            # The server holds the subject before the store is read: a push committed after this
            # read is sent by a bridge that finds this node as a responder.
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self.link.nc.flush(timeout=5)
        await self._sync(held)
        await asyncio.sleep(self.settle)
        await self._sync(held)

    async def _sync(self, held: _Held) -> None:
        """Send the device what the store says it is owed and this session has not had yet."""
        device = held.identity
        if self._held.get(device.device) is not held:
            return
        store = self.store
        owed = []
        if held.inbox:
            settings = await store.settings(device.app)
            limit = int(settings.get("inbox_limit") or 1000)
            for m in await store.run(store.inbox.pending, device.app, device.device, limit):
                owed.append((topics.inbox_topic(device.app, device.device, m.msg_id), m))
        if held.broadcast:
            for m in await store.run(store.inbox.broadcasts, device.app, device.device):
                owed.append((topics.broadcast_topic(device.app, m.msg_id), m))
        if self._held.get(device.device) is not held:
            return
        for topic, m in owed:
            if m.msg_id in held.sent:
                continue
            if self.broker.deliver(device.device, topic, m.payload, retain=True, expires_at=m.expires_at):
                held.note(m.msg_id)

    async def _resync_all(self) -> None:
        for held in list(self._held.values()):
            if held.inbox or held.broadcast:
                self._spawn(self._resync(held))

    async def _resync(self, held: _Held) -> None:
        await self._sync(held)
        await asyncio.sleep(self.settle)
        await self._sync(held)

    def _on_device_request(self, msg: Msg) -> None:
        """A live push for one device: into its session's outbox, then the answer."""
        taken = False
        try:
            topic, payload, expires_at = wire.decode_publish(msg.data)
        except ValueError:
            log.warning("bad device request on %s", msg.subject)
        else:
            parsed = topics.parse_topic(topic)
            held = self._held.get(parsed.device) if parsed is not None and parsed.device else None
            if held is not None and parsed is not None and parsed.msg_id is not None:
                taken = self.broker.deliver(held.identity.device, topic, payload, expires_at=expires_at)
                if taken:
                    held.note(parsed.msg_id)
        if msg.reply:
            self._replies.append((msg.reply, wire.TAKEN if taken else wire.NOT_TAKEN))
            self._replies_ready.set()

    async def _send_replies(self) -> None:
        nc = self.link.nc
        while True:
            await self._replies_ready.wait()
            self._replies_ready.clear()
            replies, self._replies = self._replies, []
            for subject, data in replies:
                with contextlib.suppress(nats.errors.Error):
                    await nc.publish(subject, data)

    async def _on_service_publish(self, msg: Msg) -> None:
        """A broadcast or another service publish: to the node's matching clients, not retained
        (a device subscribing later gets live broadcasts from the store)."""
        try:
            topic, payload, expires_at = wire.decode_publish(msg.data)
        except ValueError:
            log.warning("bad service publish on %s", msg.subject)
            return
        await self.broker.publish(topic, payload, qos=1, retain=False, expires_at=expires_at)
        parsed = topics.parse_topic(topic)
        if parsed is not None and parsed.kind is topics.TopicKind.BROADCAST and parsed.msg_id:
            for held in self._held.values():
                if held.broadcast and held.identity.app == parsed.app:
                    held.note(parsed.msg_id)

    # --- sessions across nodes --------------------------------------------------------------------

    async def _announce(self, device: DeviceIdentity, key: wire.SessionKey) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self.link.nc.publish(
                wire.session_subject(device.app, device.device), wire.encode_session(key)
            )

    async def _on_session(self, msg: Msg) -> None:
        try:
            key = wire.decode_session(msg.data)
        except ValueError:
            log.warning("bad session announcement on %s", msg.subject)
            return
        if key.node_id == self.node_id:
            return
        device_id = msg.subject.rsplit(".", 1)[-1]
        held = self._held.get(device_id)
        if held is None or key <= held.key:
            return  # ours is newer: the other node closes its own on hearing our announcement
        del self._held[device_id]
        self._release(held)
        if await self.broker.take_away(device_id):
            self.taken_over += 1

    def _release(self, held: _Held) -> None:
        if held.sub is not None:
            sub, held.sub = held.sub, None
            self._spawn(_unsubscribe(sub))

    # --- client publishes to the bridges ----------------------------------------------------------

    async def _send_uplink(self) -> None:
        """One batch in flight at a time, in order; a batch no bridge answered is sent again."""
        backoff = 0.1
        while True:
            await self._uplink_ready.wait()
            batch = self._uplink[:UPLINK_BATCH]
            if not batch:
                self._uplink_ready.clear()
                self._uplink_idle.set()
                continue
            try:
                await self.link.nc.request(wire.UPLINK, wire.encode_batch(batch), timeout=self.uplink_timeout)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("client publishes not taken by a bridge (%d waiting): %r", len(self._uplink), exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            # The list may have been cut from the front meanwhile (over UPLINK_LIMIT): drop what went.
            if self._uplink[: len(batch)] == batch:
                del self._uplink[: len(batch)]
            if not self._uplink:
                self._uplink_ready.clear()
                self._uplink_idle.set()


async def _unsubscribe(sub: Subscription) -> None:
    with contextlib.suppress(nats.errors.Error):
        await sub.unsubscribe()
