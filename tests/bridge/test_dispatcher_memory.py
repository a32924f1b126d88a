"""Intake → dispatcher → publisher with no broker and no sockets: an in-memory :class:`Publisher`
records what would go to MQTT (in the spirit of httpx's MockTransport), a :class:`ManualClock` moves
time, and a real store lives in tmp_path. Wired as ``mqttpush.server.BridgeNode`` wires them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bridge.dispatcher import Dispatcher
from bridge.intake import Intake, Limits
from bridge.scheduler import Scheduler
from bridge.tasks import TaskRunner
from mqttpush import topics
from mqttpush.clock import ManualClock
from mqttpush.errors import Overloaded
from mqttpush.models import App, PushRequest
from mqttpush.store import Store

START = 1_800_000_000.0  # 2027-01-15 08:00 UTC


@dataclass(frozen=True)
class Published:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    extra: dict[str, Any]

    @property
    def envelope(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.payload)
        return doc


@dataclass
class MemoryPublisher:
    """Records every publish and retained-clear instead of talking to a broker."""

    published: list[Published] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    hold: asyncio.Event | None = None
    """When set to an event, publishes wait for it (a broker that is slow to take messages)."""

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, **kwargs: Any
    ) -> None:
        if self.hold is not None:
            await self.hold.wait()
        self.published.append(Published(topic, payload, qos, retain, kwargs))

    async def clear_retained(self, topic: str, **kwargs: Any) -> None:
        self.cleared.append(topic)

    def to(self, topic: str) -> list[Published]:
        return [p for p in self.published if p.topic == topic]


@dataclass
class Rig:
    store: Store
    clock: ManualClock
    publisher: MemoryPublisher
    dispatcher: Dispatcher
    intake: Intake
    scheduler: Scheduler
    app: App

    async def device(self, name: str = "phone", timezone: str | None = None) -> str:
        store = self.store
        reg = await store.run(
            store.devices.register_device, self.app.app_key, name, "android", timezone=timezone
        )
        return reg.device_id

    async def push(self, devices: list[str], **policy: Any) -> str:
        req = PushRequest.model_validate(
            {
                "target": {"devices": devices},
                "notification": {"title": "Sale", "body": "50% off"},
                "policy": policy,
            }
        )
        result = await self.intake.push(self.app, req)
        return result["msg_id"]

    async def settle(self) -> None:
        """Let the dispatcher publish (or hold) everything submitted so far."""
        await asyncio.wait_for(self.dispatcher.drained(), 5)

    async def advance(self, seconds: float) -> None:
        """Move time, then one scheduler pass at the new time (as the server's scheduler loop does)."""
        self.clock.advance(seconds)
        await self.scheduler.tick()
        await self.settle()

    async def state(self, msg_id: str, device_id: str) -> str:
        status = await self.store.run(self.store.messages.message_status, self.app.app_key, msg_id)
        assert status is not None
        (delivery,) = [d for d in status.deliveries if d.device_id == device_id]
        return str(delivery.state)

    def inbox(self, device_id: str, msg_id: str) -> str:
        return topics.inbox_topic(self.app.app_key, device_id, msg_id)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    clock = ManualClock(START)
    store = Store(tmp_path / "data", clock=clock)
    publisher = MemoryPublisher()
    dispatcher = Dispatcher(store, publisher, clock)
    tasks = TaskRunner(store, dispatcher, clock)
    intake = Intake(store, dispatcher, tasks, clock)
    scheduler = Scheduler(store, publisher, dispatcher, intake, clock)
    running = asyncio.create_task(dispatcher.run())
    try:
        yield Rig(store, clock, publisher, dispatcher, intake, scheduler, store.apps.create_app("shop"))
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        store.close()


async def test_a_push_publishes_the_envelope_retained_on_the_devices_inbox(rig: Rig) -> None:
    device = await rig.device()
    msg_id = await rig.push([device], ttl=600)
    await rig.settle()
    (sent,) = rig.publisher.published
    assert sent.topic == rig.inbox(device, msg_id)
    assert (sent.qos, sent.retain) == (1, True)
    env = sent.envelope
    assert (env["id"], env["app"], env["type"]) == (msg_id, rig.app.app_key, "notification")
    assert (env["title"], env["body"]) == ("Sale", "50% off")
    assert (env["sent_at"], env["expires_at"]) == (START, START + 600)
    assert await rig.state(msg_id, device) == "published"
    assert rig.publisher.cleared == []


async def test_each_device_gets_its_own_inbox_copy(rig: Rig) -> None:
    devices = [await rig.device(f"p{i}") for i in range(3)]
    msg_id = await rig.push(devices)
    await rig.settle()
    assert sorted(p.topic for p in rig.publisher.published) == sorted(rig.inbox(d, msg_id) for d in devices)
    assert len({p.payload for p in rig.publisher.published}) == 1  # one envelope, many inboxes


async def test_ttl_expiry_clears_the_retained_copy(rig: Rig) -> None:
    device = await rig.device()
    msg_id = await rig.push([device], ttl=60)
    await rig.settle()
    await rig.advance(59)
    assert rig.publisher.cleared == [] and await rig.state(msg_id, device) == "published"
    await rig.advance(2)
    assert rig.publisher.cleared == [rig.inbox(device, msg_id)]
    assert await rig.state(msg_id, device) == "expired"


async def test_a_message_past_its_ttl_before_its_turn_is_expired_not_published(rig: Rig) -> None:
    device = await rig.device()
    msg_id = await rig.push([device], ttl=60)
    rig.clock.advance(61)  # before the dispatcher got to it
    await rig.settle()
    assert rig.publisher.published == []
    assert await rig.state(msg_id, device) == "expired"


async def test_a_scheduled_push_fires_only_when_the_clock_passes_start_at(rig: Rig) -> None:
    device = await rig.device()
    msg_id = await rig.push([device], start_at=START + 3600, ttl=600)
    await rig.settle()
    await rig.advance(3599)
    assert rig.publisher.published == []
    assert await rig.state(msg_id, device) == "accepted"
    await rig.advance(1)
    (sent,) = rig.publisher.to(rig.inbox(device, msg_id))
    assert sent.envelope["sent_at"] == START + 3600
    assert sent.envelope["expires_at"] == START + 3600 + 600  # the TTL counts from the send
    assert await rig.state(msg_id, device) == "published"
    await rig.advance(3600)
    assert len(rig.publisher.published) == 1  # once


async def test_quiet_hours_hold_until_the_window_ends_in_the_devices_zone(rig: Rig) -> None:
    device = await rig.device(timezone="Asia/Tokyo")  # START is 17:00 in Tokyo
    msg_id = await rig.push([device], quiet_hours={"start": "16:00", "end": "18:30"})
    await rig.settle()
    assert rig.publisher.published == [] and await rig.state(msg_id, device) == "queued"
    await rig.advance(89 * 60)
    assert rig.publisher.published == []
    await rig.advance(60)
    assert [p.topic for p in rig.publisher.published] == [rig.inbox(device, msg_id)]
    assert await rig.state(msg_id, device) == "published"


async def test_pacing_gives_each_device_its_slot(rig: Rig) -> None:
    devices = [await rig.device(f"p{i}") for i in range(3)]
    msg_id = await rig.push(devices, pace={"per_second": 0.5})  # one every 2 s
    await rig.settle()
    assert len(rig.publisher.published) == 1
    await rig.advance(1)
    assert len(rig.publisher.published) == 1
    await rig.advance(1)
    assert len(rig.publisher.published) == 2
    await rig.advance(2)
    assert sorted(p.topic for p in rig.publisher.published) == sorted(rig.inbox(d, msg_id) for d in devices)


async def test_a_daily_cap_drops_beyond_it(rig: Rig) -> None:
    device = await rig.device()
    first = await rig.push([device], daily_cap=1, over_cap="drop")
    await rig.settle()
    second = await rig.push([device], daily_cap=1, over_cap="drop")
    await rig.settle()
    assert [p.topic for p in rig.publisher.published] == [rig.inbox(device, first)]
    assert await rig.state(second, device) == "dropped"


async def test_a_new_dispatcher_republishes_what_the_store_says_is_not_delivered(rig: Rig) -> None:
    device = await rig.device()
    msg_id = await rig.push([device], ttl=600)
    await rig.settle()
    after_restart = MemoryPublisher()
    assert await Dispatcher(rig.store, after_restart, rig.clock).recover() == 1
    (again,) = after_restart.published
    assert again.topic == rig.inbox(device, msg_id) and again.retain
    assert again.payload == rig.publisher.published[0].payload


async def test_new_pushes_are_refused_while_accepted_ones_wait_past_the_lag_bound(rig: Rig) -> None:
    rig.publisher.hold = asyncio.Event()  # the broker takes nothing for now
    device = await rig.device()
    stuck = await rig.push([device])
    assert rig.dispatcher.lag() == 0.0
    rig.clock.advance(1.5)  # past the default bound of 1 s
    assert rig.dispatcher.lag() == 1.5
    with pytest.raises(Overloaded) as refused:
        await rig.push([device])
    assert (refused.value.status, refused.value.code, refused.value.retry_after) == (503, "overloaded", 2)
    rig.publisher.hold.set()
    await rig.settle()
    assert rig.dispatcher.lag() == 0.0 and await rig.state(stuck, device) == "published"
    assert await rig.push([device])  # accepted again once the backlog is gone


async def test_a_zero_bound_never_refuses(rig: Rig) -> None:
    rig.intake.limits = Limits(max_publish_lag=0)
    rig.publisher.hold = asyncio.Event()
    device = await rig.device()
    await rig.push([device])
    rig.clock.advance(3600)
    assert await rig.push([device])
    rig.publisher.hold.set()
    await rig.settle()
