"""Issue 13 in the dispatcher, on a real store, an in-memory publisher and a manual clock:
expiry at the moment of publishing (item 2), the MQTT inbox after a vendor failure (item 7),
the channel and attempts of vendor sends (item 8), and crash recovery through quiet hours and
daily caps (item 12)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bridge.channels.base import DropToken, Outcome, PushMessage, Retry
from bridge.dispatcher import Dispatcher, Outbound
from bridge.policy import SendPolicy
from bridge.vendors import VendorGateway
from mqttpush import ids, topics
from mqttpush.clock import ManualClock
from mqttpush.envelope import Envelope
from mqttpush.models import DeliveryState, DeliveryStatus
from mqttpush.store import Store

TTL = 60.0


class MemoryPublisher:
    """What a broker would hold: retained payloads and the expiry each publish carried."""

    def __init__(self) -> None:
        self.retained: dict[str, bytes] = {}
        self.published: list[tuple[str, float | None]] = []

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        expires_at: float | None = None,
    ) -> None:
        self.published.append((topic, expires_at))
        if retain and payload:
            self.retained[topic] = payload

    async def clear_retained(self, topic: str) -> None:
        self.retained.pop(topic, None)


class JumpClock(ManualClock):
    """Time jumps over every sleep (vendor backoff, rate limit): retries happen at once."""

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))


@dataclass
class FakeVendor:
    """A vendor channel answering every send with the same outcome."""

    outcome: Outcome
    name: str = "apns"
    sent: list[tuple[str, str]] = field(default_factory=list)

    async def send(self, message: PushMessage, token: str) -> Outcome:
        self.sent.append((message.msg_id, token))
        return self.outcome

    async def close(self) -> None:
        pass


@dataclass
class Bridge:
    store: Store
    clock: JumpClock
    publisher: MemoryPublisher
    dispatcher: Dispatcher
    app_key: str

    async def device(self, platform: str = "android", timezone: str | None = None) -> str:
        reg = await self.store.run(
            self.store.devices.register_device,
            self.app_key,
            ids.new_msg_id(),
            platform,
            timezone=timezone,
        )
        return reg.device_id

    async def accept(self, device_ids: list[str], ttl: float = TTL, **policy: Any) -> Outbound:
        now = self.clock.now()
        msg_id = ids.new_msg_id(now)
        payload = Envelope(msg_id, self.app_key, "notification", "t", "b", {}, now, now + ttl).encode()
        full = {"ttl": ttl} | policy
        await self.store.run(
            self.store.messages.accept_message,
            msg_id=msg_id,
            app_key=self.app_key,
            kind="devices",
            target={"devices": device_ids},
            envelope=payload,
            policy=full,
            expires_at=now + ttl,
            device_ids=device_ids,
        )
        return Outbound(msg_id, self.app_key, payload, tuple(device_ids), policy=SendPolicy.of(full, {}))

    async def send(self, out: Outbound) -> None:
        self.dispatcher.submit(out)
        await self.dispatcher.drained()
        if self.dispatcher.gateway is not None:
            await self.dispatcher.gateway.drained()

    async def delivery(self, msg_id: str, device_id: str) -> DeliveryStatus:
        status = await self.store.run(self.store.messages.message_status, self.app_key, msg_id)
        assert status is not None
        (d,) = [d for d in status.deliveries if d.device_id == device_id]
        return d

    async def vendor(self, outcome: Outcome) -> FakeVendor:
        fake = FakeVendor(outcome)
        self.dispatcher.gateway = VendorGateway(self.store, self.clock, lambda _v, _c: fake)
        await self.store.run(
            self.store.vendors.put_vendor_config, self.app_key, "apns", {"rate_per_second": 1000}
        )
        return fake


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[Bridge]:
    clock = JumpClock()  # 2027-01-15 08:00 UTC
    store = Store(tmp_path / "data", clock)
    publisher = MemoryPublisher()
    dispatcher = Dispatcher(store, publisher, clock)
    app = store.apps.create_app("paths")
    running = asyncio.create_task(dispatcher.run())
    try:
        yield Bridge(store, clock, publisher, dispatcher, app.app_key)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        if dispatcher.gateway is not None:
            await dispatcher.gateway.close()
        store.close()


def _inbox(b: Bridge, device: str, msg_id: str) -> str:
    return topics.inbox_topic(b.app_key, device, msg_id)


# --- item 2: expiry holds when publishing --------------------------------------------------------


async def test_every_publish_carries_the_expiry(bridge: Bridge) -> None:
    b = bridge
    device = await b.device()
    out = await b.accept([device], ttl=30)
    await b.send(out)
    assert b.publisher.published == [(_inbox(b, device, out.msg_id), b.clock.now() + 30)]


async def test_a_message_past_its_ttl_is_expired_not_published(bridge: Bridge) -> None:
    b = bridge
    device = await b.device()
    out = await b.accept([device], ttl=2)
    b.clock.advance(4)  # e.g. the dispatcher's queue was long
    await b.send(out)
    assert b.publisher.published == []
    d = await b.delivery(out.msg_id, device)
    assert (d.state, d.history[-1].detail) == ("expired", "ttl")


async def test_recover_expires_what_passed_its_ttl_instead_of_publishing_it(bridge: Bridge) -> None:
    b = bridge
    device = await b.device()
    never_sent = await b.accept([device], ttl=2)
    sent = await b.accept([device], ttl=2)
    await b.send(sent)
    assert _inbox(b, device, sent.msg_id) in b.publisher.retained
    fresh = await b.accept([device], ttl=600)
    b.clock.advance(4)
    b.publisher.published.clear()

    assert await b.dispatcher.recover() == 1
    await b.dispatcher.drained()
    assert b.publisher.published == [(_inbox(b, device, fresh.msg_id), b.clock.now() - 4 + 600)]
    assert _inbox(b, device, sent.msg_id) not in b.publisher.retained  # cleared, not re-published
    for out in (never_sent, sent):
        assert (await b.delivery(out.msg_id, device)).state == "expired"


# --- item 12: recovery goes through quiet hours and daily caps -------------------------------------


async def test_recover_holds_an_unsent_delivery_in_quiet_hours(bridge: Bridge) -> None:
    b = bridge
    device = await b.device(timezone="Europe/Berlin")  # 09:00 there
    published = await b.accept([device])
    await b.send(published)
    quiet = {"start": "08:30", "end": "10:00"}
    unsent = await b.accept([device], quiet_hours=quiet)  # committed; the process died before publishing
    b.publisher.published.clear()

    await b.dispatcher.recover()
    await b.dispatcher.drained()
    # Already published: restored to its inbox as it was. Never sent: held like a first send.
    assert [t for t, _ in b.publisher.published] == [_inbox(b, device, published.msg_id)]
    d = await b.delivery(unsent.msg_id, device)
    assert (d.state, d.history[-1].detail) == ("queued", "quiet_hours")

    b.clock.advance(3600)  # 10:00 in Berlin
    (due,) = await b.store.run(b.store.messages.due_held)
    assert (due.msg_id, due.device_id) == (unsent.msg_id, device)


async def test_recover_drops_an_unsent_delivery_over_the_daily_cap(bridge: Bridge) -> None:
    b = bridge
    device = await b.device()
    await b.send(await b.accept([device]))  # today's one
    unsent = await b.accept([device], daily_cap=1, over_cap="drop")

    await b.dispatcher.recover()
    await b.dispatcher.drained()
    d = await b.delivery(unsent.msg_id, device)
    assert (d.state, d.error) == ("dropped", "capped")
    assert _inbox(b, device, unsent.msg_id) not in b.publisher.retained


async def test_recover_publishes_an_unsent_delivery_the_policy_lets_through(bridge: Bridge) -> None:
    b = bridge
    device = await b.device()
    unsent = await b.accept([device], quiet_hours={"start": "22:00", "end": "07:00"}, daily_cap=5)
    await b.dispatcher.recover()
    await b.dispatcher.drained()
    assert (await b.delivery(unsent.msg_id, device)).state == "published"
    assert _inbox(b, device, unsent.msg_id) in b.publisher.retained


# --- items 7 and 8: vendor failures, channel and attempts ------------------------------------------


async def _ios_with_token(b: Bridge) -> str:
    device = await b.device(platform="ios")
    await b.store.run(b.store.devices.set_vendor_token, b.app_key, device, "apns", "a" * 64)
    return device


async def test_dead_token_under_mqtt_else_vendor_leaves_the_message_in_the_inbox(bridge: Bridge) -> None:
    b = bridge
    fake = await b.vendor(DropToken("BadDeviceToken"))
    device = await _ios_with_token(b)  # offline: the default strategy picks APNs
    out = await b.accept([device], ttl=600)
    await b.send(out)

    assert fake.sent == [(out.msg_id, "a" * 64)]
    assert b.publisher.published == [(_inbox(b, device, out.msg_id), b.clock.now() + 600)]
    assert json.loads(b.publisher.retained[_inbox(b, device, out.msg_id)])["id"] == out.msg_id
    d = await b.delivery(out.msg_id, device)
    assert (d.state, d.channel, d.attempts) == ("published", "apns,mqtt", 2)
    assert [h.state for h in d.history] == ["accepted", "published"]
    assert d.history[-1].detail == "apns: BadDeviceToken; waiting in the MQTT inbox"
    assert await b.store.run(b.store.devices.vendor_tokens, device) == []


async def test_vendor_failure_after_the_ttl_does_not_reach_the_inbox(bridge: Bridge) -> None:
    b = bridge
    await b.vendor(Retry("unavailable", after=100))  # five attempts, 100 s apart: past the TTL
    device = await _ios_with_token(b)
    out = await b.accept([device], ttl=60)
    await b.send(out)
    assert b.publisher.published == []
    assert (await b.delivery(out.msg_id, device)).state == "accepted"  # the TTL sweep expires it


async def test_vendor_only_send_fails_after_five_attempts_showing_vendor_and_attempts(
    bridge: Bridge,
) -> None:
    b = bridge
    fake = await b.vendor(Retry("ServiceUnavailable"))
    device = await _ios_with_token(b)
    out = await b.accept([device], strategy="vendor")
    await b.send(out)

    assert len(fake.sent) == 5
    assert b.publisher.published == []
    d = await b.delivery(out.msg_id, device)
    assert (d.state, d.channel, d.attempts) == ("failed", "apns", 5)
    assert d.error == "apns: gave up after 5 attempts: ServiceUnavailable"
    assert d.history[-1].state == DeliveryState.FAILED.value
