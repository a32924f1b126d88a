"""From committed deliveries to MQTT publishes, through the delivery policy, and back after a restart.

For each message (an :class:`Outbound`), in priority order (``high`` before ``normal``):

1. quiet hours and daily caps, in each device's time zone: hold (``queued`` until a time) or
   drop (``dropped(capped)``);
2. pacing: the rest get publish slots ``1/rate`` apart; all but the first are held until their
   slot, and the scheduler releases them;
3. publish QoS 1 retained to each inbox (or once on the broadcast topic), then ``published``;
   every publish carries the message's ``expires_at``, and a message already past it is not
   published at all but ``expired``;
4. re-push timers, and the per-device inbox bound: beyond it the oldest waiting message is
   cleared and ``dropped(inbox_full)``.

Devices the router sends to a vendor are forwarded after the MQTT publishes; under
``mqtt_else_vendor`` a vendor failure puts the message in the device's MQTT inbox instead.

Nothing is lost if the process dies between commit and publish: :meth:`recover` re-publishes
every undelivered, unexpired delivery of an active message at start, through the same policy.
Nor if a batch fails on the way (a store write refused): :meth:`run` puts it back in the queue.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.channels.base import PushMessage
from bridge.policy import DeviceGate, SendPolicy, gate, local_midnight
from bridge.publisher import Publisher
from bridge.router import DEFAULT_STRATEGY, route
from bridge.vendors import Forward, VendorGateway
from mqttpush import envelope, topics
from mqttpush.clock import Clock, SystemClock
from mqttpush.models import DeliveryState, PendingDelivery
from mqttpush.store import Store

log = logging.getLogger("mqttpush.dispatcher")

_BATCH = 500
_CONCURRENCY = 256


@dataclass(frozen=True, slots=True)
class Outbound:
    """A committed message and the devices whose deliveries are to be published now."""

    msg_id: str
    app_key: str
    payload: bytes
    device_ids: tuple[str, ...]
    broadcast: bool = False
    """Publish once on the app's broadcast topic instead of once per device."""
    policy: SendPolicy = field(default_factory=SendPolicy)
    released: bool = False
    """A hold that ended: pacing already gave these their slot (quiet hours and caps are checked again)."""


@dataclass(slots=True)
class _Send:
    """One message of a batch on its way: the devices policy lets through now, then those routed to MQTT."""

    out: Outbound
    expires_at: float | None
    devices: tuple[str, ...]
    mqtt: tuple[str, ...] = ()


class Dispatcher:
    def __init__(self, store: Store, publisher: Publisher, clock: Clock | None = None) -> None:
        self._store = store
        self._publisher = publisher
        self._clock = clock or SystemClock()
        self._queue: asyncio.PriorityQueue[tuple[int, int, Outbound]] = asyncio.PriorityQueue()
        self._seq = itertools.count()
        self._waiting: OrderedDict[int, float] = OrderedDict()
        """Submitted and not yet through :meth:`_dispatch`: seq -> submit time (oldest first)."""
        self._idle = asyncio.Event()
        self._idle.set()
        self._pace_next: dict[str, float] = {}
        self.gateway: VendorGateway | None = None
        """Vendor channels, for devices the router sends there (None: MQTT only)."""
        self._vendor_plan: dict[str, dict[str, list[tuple[str, str]]]] = {}
        self.on_hold: Callable[[], None] | None = None
        """Told when deliveries are held, so the scheduler wakes for the earliest release."""

    def submit(self, out: Outbound) -> None:
        self._idle.clear()
        seq = next(self._seq)
        self._waiting[seq] = self._clock.now()
        self._queue.put_nowait((out.policy.priority, seq, out))

    def lag(self) -> float:
        """How long the oldest submitted message has waited to be published (0 when none waits):
        what the intake bounds so that overload shows as refusals, not as a silent backlog."""
        if not self._waiting:
            return 0.0
        return max(0.0, self._clock.now() - next(iter(self._waiting.values())))

    def backlog(self) -> int:
        """Messages submitted and not yet through publishing (GET /metrics)."""
        return len(self._waiting)

    async def drained(self) -> None:
        """Wait until everything submitted so far is published (or held) and recorded."""
        await self._idle.wait()

    async def expire(self) -> int:
        """Expire deliveries past their TTL and clear their retained topics; returns how many topics."""
        inboxes, broadcasts = await self._store.run(self._store.messages.expire_due)
        for app_key, device_id, msg_id in inboxes:
            await self._publisher.clear_retained(topics.inbox_topic(app_key, device_id, msg_id))
        for app_key, msg_id in broadcasts:
            await self._publisher.clear_retained(topics.broadcast_topic(app_key, msg_id))
        if inboxes or broadcasts:
            log.info("expired inboxes=%d broadcasts=%d", len(inboxes), len(broadcasts))
        return len(inboxes) + len(broadcasts)

    async def recover(self) -> int:
        """Re-publish what the store says is not delivered yet; returns how many deliveries.

        What expired meanwhile is expired first. Deliveries already published are restored to their
        retained topics as they were (they passed quiet hours and caps when first sent); those never
        sent go through :meth:`submit` again: quiet hours, caps, pacing and routing, as a first send.
        """
        store = self._store
        await self.expire()
        pending = await store.run(store.messages.pending_deliveries)
        broadcasts = {p.msg_id: p for p in pending if p.fanout == "topic"}
        for p in broadcasts.values():
            await self._publish_broadcast(
                Outbound(p.msg_id, p.app_key, p.payload, (), broadcast=True), p.expires_at
            )
        inbox = [p for p in pending if p.fanout != "topic"]
        for p in inbox:
            if p.state is DeliveryState.PUBLISHED:
                await self._publisher.publish(
                    topics.inbox_topic(p.app_key, p.device_id, p.msg_id),
                    p.payload,
                    qos=1,
                    retain=True,
                    expires_at=p.expires_at,
                )
        unsent: dict[tuple[str, bool], list[PendingDelivery]] = {}
        for p in inbox:
            if p.state is not DeliveryState.PUBLISHED:
                # queued without a hold time: released from its hold (pacing gave it its slot)
                unsent.setdefault((p.msg_id, p.state is DeliveryState.QUEUED), []).append(p)
        policies = await store.run(store.messages.message_policies, [msg_id for msg_id, _ in unsent])
        settings: dict[str, dict[str, Any]] = {}
        for (msg_id, released), items in unsent.items():
            app_key, policy = policies[msg_id]
            if app_key not in settings:
                settings[app_key] = await store.settings(app_key)
            self.submit(
                Outbound(
                    msg_id,
                    app_key,
                    items[0].payload,
                    tuple(p.device_id for p in items),
                    policy=SendPolicy.of(policy, settings[app_key]),
                    released=released,
                )
            )
        if pending:
            log.info("recovered deliveries=%d", len(pending))
        return len(pending)

    async def run(self) -> None:
        """Publish what is submitted, a batch at a time, until cancelled. A batch that fails (the
        store refused a write, say) goes back in the queue whole before the error propagates to
        the supervisor (bridge/supervisor.py), which runs this again after a backoff: what it had
        published is published again (devices de-duplicate by id) and moved to ``published`` then.
        Nothing submitted meanwhile is lost: it waits in the queue."""
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty() and len(items) < _BATCH:
                items.append(self._queue.get_nowait())
            try:
                await self._dispatch([out for _, _, out in items])
            except BaseException:
                for item in items:
                    self._queue.put_nowait(item)
                raise
            for _, seq, _ in items:
                self._waiting.pop(seq, None)
            if self._queue.empty():
                self._idle.set()

    async def _dispatch(self, batch: list[Outbound]) -> None:
        """Publish a batch of messages together: one routing read, concurrent publishes, one
        ``published`` transition and one inbox-bound check for all of them (a burst of
        single-device pushes costs a few store calls, not a few per push)."""
        now = self._clock.now()
        sends: list[_Send] = []
        for out in batch:
            expires_at = _expires_at(out.payload)
            if expires_at is not None and expires_at <= now:
                await self._expired(out)
            elif out.broadcast:
                await self._publish_broadcast(out, expires_at)
            else:
                sends.append(_Send(out, expires_at, await self._apply_policy(out)))
        await self._route(sends)
        todo = [(send, device_id) for send in sends for device_id in send.mqtt]
        published: list[tuple[str, str]] = []
        for i in range(0, len(todo), _CONCURRENCY):
            chunk = todo[i : i + _CONCURRENCY]
            # Many publishes in flight at once: over a socket (split mode) each waits for its PUBACK.
            results = await asyncio.gather(
                *(self._publish_inbox(send.out, d, send.expires_at) for send, d in chunk),
                return_exceptions=True,
            )
            for (send, device_id), result in zip(chunk, results, strict=True):
                if isinstance(result, BaseException):
                    # The delivery stays pending in the store; the next start re-publishes it.
                    log.error(
                        "publish failed msg_id=%s device_id=%s: %r",
                        send.out.msg_id,
                        device_id,
                        result,
                        extra={
                            "msg_id": send.out.msg_id,
                            "device_id": device_id,
                            "app_key": send.out.app_key,
                        },
                    )
                elif result:  # not taken: connected to no broker node, it waits in the store
                    published.append((send.out.msg_id, device_id))
        if published:
            moved = await self._store.run(self._store.messages.transition, published, DeliveryState.PUBLISHED)
            if len(moved) != len(published):
                await self._take_back(set(published) - set(moved))
            by_msg: dict[str, list[str]] = {}
            for msg_id, device_id in moved:
                by_msg.setdefault(msg_id, []).append(device_id)
            await self._after_publish([(send.out, by_msg.get(send.out.msg_id, [])) for send in sends])
        for send in sends:
            self._forward(send.out)

    async def _apply_policy(self, out: Outbound) -> tuple[str, ...]:
        """Quiet hours, caps and pacing: which devices get it now (the others are held or dropped)."""
        sp, store, now = out.policy, self._store, self._clock.now()
        devices = list(out.device_ids)
        holds: dict[str, tuple[float, str]] = {}
        drops: list[str] = []
        if sp.gated:
            zones = await store.run(store.devices.device_zones, devices)
            sent: dict[str, int] = {}
            if sp.daily_cap is not None:
                sent = await store.run(
                    store.messages.sent_since, {d: local_midnight(now, zones.get(d)) for d in devices}
                )
            now_ok = []
            for d in devices:
                decision: DeviceGate = gate(
                    now, zones.get(d), sp.quiet, sp.daily_cap, sent.get(d, 0), sp.over_cap
                )
                if decision.action == "send":
                    now_ok.append(d)
                elif decision.action == "drop":
                    drops.append(d)
                else:
                    assert decision.until is not None and decision.reason is not None
                    holds[d] = (decision.until, decision.reason)
            devices = now_ok
        if sp.pace is not None and devices and not out.released:
            interval = 1.0 / sp.pace.rate(len(devices))
            slot = max(now, self._pace_next.get(out.msg_id, now))
            first_now = []
            for d in devices:
                if slot <= now:
                    first_now.append(d)
                else:
                    holds[d] = (slot, "paced")
                slot += interval
            self._pace_next[out.msg_id] = slot
            devices = first_now
        if drops:
            await store.run(store.messages.drop, out.msg_id, drops, "capped")
        if holds:
            await store.run(store.messages.hold, out.msg_id, holds)
            if self.on_hold is not None:
                self.on_hold()
        return tuple(devices)

    async def _route(self, sends: list[_Send]) -> None:
        """Split each message's devices between MQTT and vendor channels (bridge/router.py): sets
        ``send.mqtt``; the vendor half is sent after the MQTT publishes (``_forward``), so a vendor
        failure never overtakes an MQTT copy that is still on its way."""
        gateway = self.gateway
        routed: list[tuple[_Send, frozenset[str]]] = []
        for send in sends:
            send.mqtt = send.devices
            if gateway is None or not send.devices or send.out.policy.strategy == "mqtt":
                continue
            configured = await gateway.configured(send.out.app_key)
            if configured or send.out.policy.strategy == "vendor":
                routed.append((send, configured))
        if not routed:
            return
        wanted = list(dict.fromkeys(d for send, _ in routed for d in send.devices))
        facts = await self._store.run(self._store.devices.route_facts, wanted)
        now = self._clock.now()
        for send, configured in routed:
            out, mqtt, impossible = send.out, [], []
            forwards: dict[str, list[tuple[str, str]]] = {}
            for device_id in send.devices:
                r = route(out.policy.strategy, facts[device_id], configured, now)
                if r.mqtt:
                    mqtt.append(device_id)
                if r.vendor is not None and r.token is not None:
                    forwards.setdefault(r.vendor, []).append((device_id, r.token))
                elif r.failure is not None:
                    impossible.append(device_id)
            if impossible:
                await self._store.run(
                    self._store.messages.drop, out.msg_id, impossible, "no_vendor_token", DeliveryState.FAILED
                )
            self._vendor_plan[out.msg_id] = forwards
            send.mqtt = tuple(mqtt)

    def _forward(self, out: Outbound) -> None:
        plan = self._vendor_plan.pop(out.msg_id, None)
        if not plan or self.gateway is None:
            return
        doc = json.loads(out.payload)
        ttl = max(0, int(float(doc.get("expires_at", 0)) - self._clock.now()))
        message = PushMessage(out.msg_id, doc, ttl, "high" if out.policy.priority == 0 else "normal")
        on_failure = None
        if (out.policy.strategy or DEFAULT_STRATEGY) == "mqtt_else_vendor":
            on_failure = functools.partial(self._keep_in_inbox, out)
        for vendor, items in plan.items():
            self.gateway.submit(
                out.app_key, vendor, [Forward(message, d, t) for d, t in items], on_failure=on_failure
            )

    async def _keep_in_inbox(self, out: Outbound, failed: list[tuple[Forward, str]]) -> None:
        """``mqtt_else_vendor``: what the vendor could not carry waits in the device's MQTT inbox
        (retained) until its TTL; the history's ``published`` entry says why."""
        expires_at = _expires_at(out.payload)
        if expires_at is not None and expires_at <= self._clock.now():
            return  # too late for the inbox: the TTL sweep expires the delivery
        by_reason: dict[str, list[tuple[str, str]]] = {}
        for f, reason in failed:
            try:
                if not await self._publish_inbox(out, f.device_id, expires_at):
                    continue  # connected to no broker node: it waits in the store
            except Exception as exc:  # it stays accepted: the next start publishes it
                log.error(
                    "publish failed msg_id=%s device_id=%s: %r",
                    out.msg_id,
                    f.device_id,
                    exc,
                    extra={"msg_id": out.msg_id, "device_id": f.device_id, "app_key": out.app_key},
                )
                continue
            by_reason.setdefault(reason, []).append((out.msg_id, f.device_id))
        moved_all: list[str] = []
        for reason, keys in by_reason.items():
            detail = f"{reason}; waiting in the MQTT inbox"
            moved = await self._store.run(
                self._store.messages.transition, keys, DeliveryState.PUBLISHED, detail
            )
            if len(moved) != len(keys):
                await self._take_back(set(keys) - set(moved))
            moved_all += [d for _, d in moved]
        await self._after_publish([(out, moved_all)])

    async def _expired(self, out: Outbound) -> None:
        """A message whose TTL passed before its turn (a long hold, a queue): expired, never published."""
        if out.broadcast:
            return  # the TTL sweep clears the broadcast and expires its deliveries
        keys = [(out.msg_id, d) for d in out.device_ids]
        await self._store.run(self._store.messages.transition, keys, DeliveryState.EXPIRED, "ttl")

    async def _take_back(self, keys: set[tuple[str, str]]) -> None:
        """Deliveries cancelled, recalled or expired while their publish was in flight: clear them again."""
        ended = await self._store.run(self._store.messages.ended, list(keys))
        for app_key, device_id, msg_id in ended:
            await self._publisher.clear_retained(topics.inbox_topic(app_key, device_id, msg_id))

    async def _after_publish(self, published: list[tuple[Outbound, list[str]]]) -> None:
        """Re-push timers and the per-device inbox bound for what was just published."""
        store = self._store
        repush: dict[float, list[tuple[str, str]]] = {}
        by_limit: dict[int, list[str]] = {}
        for out, device_ids in published:
            if not device_ids:
                continue
            sp = out.policy
            if sp.repush_after is not None:
                at = self._clock.now() + sp.repush_after
                repush.setdefault(at, []).extend((out.msg_id, d) for d in device_ids)
            by_limit.setdefault(sp.inbox_limit, []).extend(device_ids)
        for at, keys in repush.items():
            await store.run(store.messages.set_repush, keys, at)
        if repush and self.on_hold is not None:
            self.on_hold()
        for limit, device_ids in by_limit.items():
            overflow = await store.run(store.messages.inbox_overflow, device_ids, limit)
            for app_key, device_id, msg_id in overflow:
                await self._publisher.clear_retained(topics.inbox_topic(app_key, device_id, msg_id))
                await store.run(store.messages.drop, msg_id, [device_id], "inbox_full")
            if overflow:
                log.info("inbox bound: dropped=%d", len(overflow))

    async def _publish_inbox(self, out: Outbound, device_id: str, expires_at: float | None) -> bool:
        """False when no broker took it (a cluster where no node holds the device)."""
        topic = topics.inbox_topic(out.app_key, device_id, out.msg_id)
        taken = await self._publisher.publish(topic, out.payload, qos=1, retain=True, expires_at=expires_at)
        return taken is not False

    async def _publish_broadcast(self, out: Outbound, expires_at: float | None) -> None:
        try:
            await self._publisher.publish(
                topics.broadcast_topic(out.app_key, out.msg_id),
                out.payload,
                qos=1,
                retain=True,
                expires_at=expires_at,
            )
        except Exception:
            log.exception(
                "broadcast publish failed msg_id=%s",
                out.msg_id,
                extra={"msg_id": out.msg_id, "app_key": out.app_key},
            )
            return
        await self._store.run(self._store.messages.publish_all, out.msg_id)


def _expires_at(payload: bytes) -> float | None:
    """The envelope's ``expires_at`` (every envelope the intake builds has one)."""
    doc = envelope.decode(payload)
    value = doc.get("expires_at") if doc is not None else None
    return float(value) if isinstance(value, int | float) else None
