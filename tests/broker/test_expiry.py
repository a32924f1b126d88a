"""Expiry at the moment of delivery (issue 13): a retained message published with ``expires_at``
is never sent after that time — not replayed to a device that subscribes late, not sent from a
persistent session's offline queue — and is pruned from the broker's memory. Time is a
``ManualClock``: the tests move it, nothing sleeps."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from mqttpush.broker import PushBroker
from mqttpush.clock import ManualClock
from mqttpush.topics import DeviceIdentity, Identity, inbox_filter, inbox_topic
from tests.mqtt_raw import Publish, RawClient

APP = "app"
DEVICE = "dev"
TOKEN = "token"
QUIET = 0.5
SWEEP = 30.0


@pytest.fixture
async def broker(manual_clock: ManualClock) -> AsyncIterator[PushBroker]:
    async def device(client_id: str, user: str | None, password: str | None) -> Identity | None:
        return DeviceIdentity(APP, client_id) if password == TOKEN else None

    b = PushBroker(host="127.0.0.1", port=0, authenticator=device, clock=manual_clock, expiry_sweep=SWEEP)
    await b.start()
    yield b
    await b.shutdown()


def _envelope(msg_id: str, expires_at: float | None) -> bytes:
    return json.dumps({"id": msg_id, "expires_at": expires_at}).encode()


async def _push(broker: PushBroker, msg_id: str, expires_at: float | None) -> str:
    topic = inbox_topic(APP, DEVICE, msg_id)
    await broker.publish(topic, _envelope(msg_id, expires_at), qos=1, retain=True, expires_at=expires_at)
    return topic


async def _ids(client: RawClient, n: int) -> list[str]:
    """The ids of the next ``n`` messages, then nothing more for QUIET seconds."""
    got: list[Publish | None] = [await client.next_publish(5) for _ in range(n)]
    assert None not in got, got
    assert await client.collect(QUIET) == []
    return sorted(json.loads(p.payload)["id"] for p in got if p is not None)


async def test_offline_device_does_not_get_a_message_that_expired_before_it_subscribed(
    broker: PushBroker, manual_clock: ManualClock
) -> None:
    now = manual_clock.now()
    expired = await _push(broker, "ttl2", now + 2)
    await _push(broker, "ttl60", now + 60)
    await _push(broker, "forever", None)
    manual_clock.advance(4)

    c, code, _ = await RawClient.connect(broker.port, DEVICE, DEVICE, TOKEN)
    assert code == 0
    assert await c.subscribe(inbox_filter(APP, DEVICE)) == [1]
    assert await _ids(c, 2) == ["forever", "ttl60"]
    await c.disconnect()
    assert expired not in broker.retained_topics()
    assert broker.retained_payload(expired) is None


async def test_a_message_already_expired_when_published_goes_nowhere_and_clears_the_topic(
    broker: PushBroker, manual_clock: ManualClock
) -> None:
    c, code, _ = await RawClient.connect(broker.port, DEVICE, DEVICE, TOKEN)
    assert code == 0
    assert await c.subscribe(inbox_filter(APP, DEVICE)) == [1]
    topic = await _push(broker, "same", manual_clock.now() + 10)
    assert await _ids(c, 1) == ["same"]
    await broker.publish(topic, b"late", qos=1, retain=True, expires_at=manual_clock.now() - 1)
    assert await c.collect(QUIET) == []
    assert broker.retained_topics() == []
    await c.disconnect()


async def test_persistent_session_queue_drops_what_expired_while_the_device_was_away(
    broker: PushBroker, manual_clock: ManualClock
) -> None:
    c, code, _ = await RawClient.connect(broker.port, DEVICE, DEVICE, TOKEN, clean=False)
    assert code == 0
    assert await c.subscribe(inbox_filter(APP, DEVICE)) == [1]
    await c.disconnect()
    now = manual_clock.now()
    await _push(broker, "ttl2", now + 2)
    await _push(broker, "ttl60", now + 60)
    manual_clock.advance(4)

    again, code, present = await RawClient.connect(broker.port, DEVICE, DEVICE, TOKEN, clean=False)
    assert (code, present) == (0, True)
    assert await _ids(again, 1) == ["ttl60"]
    await again.disconnect()


async def test_expired_retained_messages_are_swept_without_anyone_asking(
    broker: PushBroker, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    swept: list[int] = []
    done = asyncio.Event()
    prune = broker.prune_expired

    def watched() -> int:
        swept.append(prune())
        done.set()
        return swept[-1]

    monkeypatch.setattr(broker, "prune_expired", watched)
    now = manual_clock.now()
    await _push(broker, "ttl2", now + 2)
    await _push(broker, "ttl600", now + 600)
    manual_clock.advance(SWEEP + 1)  # wakes the sweeper
    await asyncio.wait_for(done.wait(), 5)
    assert swept == [1]
    assert len(broker._retained) == 1


async def test_cleared_topics_do_not_pile_up_in_the_expiry_queue(
    broker: PushBroker, manual_clock: ManualClock
) -> None:
    # Inbox topics are cleared by receipts long before their TTL: their expiry entries are stale.
    for i in range(3000):
        topic = await _push(broker, f"m{i}", manual_clock.now() + 86400)
        await broker.clear_retained(topic)
    kept = await _push(broker, "kept", manual_clock.now() + 86400)
    assert broker.prune_expired() == 0
    assert len(broker._expiring) == 1
    manual_clock.advance(86401)
    assert broker.prune_expired() == 1
    assert kept not in broker.retained_topics()
