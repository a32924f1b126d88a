"""Each amqtt 0.12.1 defect our broker layer fixes: a witness that it exists in plain amqtt
(so we notice when upstream fixes it and our override can go), and the test that ours is fixed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from amqtt.broker import Broker

from mqttpush.store import Store
from tests.conftest import Running
from tests.mqtt_raw import RawClient

QUIET = 0.5


class PlainAmqtt:
    def __init__(self, broker: Broker, errors: list[dict[str, Any]]) -> None:
        self.broker, self.errors = broker, errors

    @property
    def port(self) -> int:
        return int(self.broker._servers["default"].instance.sockets[0].getsockname()[1])


@pytest.fixture
async def plain() -> AsyncIterator[PlainAmqtt]:
    # Any client with a username gets in (and, unlike anonymous ones, gets a persistent session).
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False}},
        }
    )
    await broker.start()
    yield PlainAmqtt(broker, errors)
    await broker.shutdown()


def _ids(publishes: list[Any]) -> list[str]:
    return [json.loads(p.payload)["id"] for p in publishes]


# --- retained replay on CONNECT covers every filter in the broker ------------------------------


async def test_witness_plain_amqtt_replays_other_clients_retained_at_connect(plain: PlainAmqtt) -> None:
    await plain.broker.retain_message(None, "mqttpush/app/d/alice/m/1", b'{"id": "1"}', 1)
    alice, _, _ = await RawClient.connect(plain.port, "alice", "alice")
    await alice.subscribe("mqttpush/app/d/alice/m/+")
    bob, _, _ = await RawClient.connect(plain.port, "bob", "bob")  # subscribes to nothing
    leaked = await bob.collect(QUIET)
    assert [p.topic for p in leaked] == ["mqttpush/app/d/alice/m/1"]


async def test_connect_replays_only_the_clients_own_retained(running: Running) -> None:
    r = running
    (alice, alice_token), (bob, bob_token) = r.register(2)
    msg = await asyncio.to_thread(r.push, [alice])
    a, _, _ = await RawClient.connect(r.mqtt_port, alice, alice, alice_token)
    await a.subscribe(f"mqttpush/{r.app_key}/d/{alice}/m/+")
    b, code, _ = await RawClient.connect(r.mqtt_port, bob, bob, bob_token)
    assert code == 0
    assert await b.collect(QUIET) == []
    assert _ids(await a.collect(QUIET)) == [msg]


# --- concurrent CONNECTs: dict changed size during iteration ------------------------------------


async def _device(
    port: int, client_id: str, user: str | None, password: str | None, topic_filter: str
) -> list[Any]:
    c, code, _ = await RawClient.connect(port, client_id, user, password, timeout=30)
    assert code == 0
    assert await c.subscribe(topic_filter, timeout=30) == [1]
    got = await c.collect(1.0)
    await c.disconnect()
    return got


async def test_witness_plain_amqtt_connect_handler_crashes_under_concurrent_connects(
    plain: PlainAmqtt,
) -> None:
    for i in range(200):
        await plain.broker.retain_message(
            None, f"mqttpush/app/d/d{i}/m/1", json.dumps({"id": f"m{i}"}).encode(), 1
        )
    results = await asyncio.gather(
        *[_device(plain.port, f"d{i}", f"d{i}", None, f"mqttpush/app/d/d{i}/m/+") for i in range(200)],
        return_exceptions=True,
    )
    crashes = [e for e in plain.errors if "dictionary changed size" in str(e.get("exception"))]
    assert crashes, "amqtt no longer crashes here: drop our CONNECT override?"
    assert any(isinstance(res, BaseException) for res in results)


async def test_200_devices_connecting_at_once_each_get_exactly_their_own(running: Running) -> None:
    r = running
    errors: list[dict[str, Any]] = []
    r.loop.call_soon_threadsafe(r.loop.set_exception_handler, lambda _loop, ctx: errors.append(ctx))
    devices = await asyncio.to_thread(r.register, 200)
    expected = {}
    for device, _ in devices:
        expected[device] = await asyncio.to_thread(r.push, [device], f"for {device}")
    await asyncio.to_thread(r.call, r.server.dispatcher.drained())
    results = await asyncio.gather(
        *[_device(r.mqtt_port, d, d, t, f"mqttpush/{r.app_key}/d/{d}/m/+") for d, t in devices]
    )
    misdelivered = 0
    for (device, _), got in zip(devices, results, strict=True):
        assert expected[device] in _ids(got), device
        misdelivered += sum(1 for p in got if f"/d/{device}/m/" not in p.topic)
        assert len(set(_ids(got))) == len(got) == 1, (device, _ids(got))
    assert misdelivered == 0
    assert errors == []


# --- queued messages of a persistent session keep their real retain flag -------------------------


async def _queued_retain_flag(
    port: int, device: str, user: str | None, password: str | None, probe: RawClient, topic: str, publish: Any
) -> list[Any]:
    """Subscribe with a persistent session, go offline, have ``publish`` send one message, come back."""
    c, _, _ = await RawClient.connect(port, device, user, password, clean=False)
    assert await c.subscribe(topic.rsplit("/", 1)[0] + "/+") == [1]
    await c.disconnect()
    assert await probe.subscribe(topic) == [1]
    await publish()
    assert await probe.next_publish(10) is not None  # the broker has routed it (and queued ours)
    c, code, present = await RawClient.connect(port, device, user, password, clean=False)
    assert (code, present) == (0, True)
    got = await c.collect(QUIET * 2)
    await c.disconnect()
    return got


async def test_witness_plain_amqtt_sets_retain_on_queued_messages(plain: PlainAmqtt) -> None:
    topic = "mqttpush/app/d/dev/m/1"
    probe, _, _ = await RawClient.connect(plain.port, "probe", "probe")
    got = await _queued_retain_flag(
        plain.port,
        "dev",
        "dev",
        None,
        probe,
        topic,
        lambda: plain.broker.internal_message_broadcast(topic, b'{"id": "1"}', 1),
    )
    assert [(p.topic, p.retain) for p in got] == [(topic, True)]


async def test_queued_messages_are_delivered_with_retain_0(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    topic = f"mqttpush/{r.app_key}/d/{device}/m/queued1"
    user, password = Store(r.data_dir).accounts.service_credentials()
    probe, _, _ = await RawClient.connect(r.mqtt_port, "probe", user, password)

    async def publish() -> None:
        svc, _, _ = await RawClient.connect(r.mqtt_port, "svc", user, password)
        svc.publish(topic, b'{"id": "queued1"}', qos=1, retain=False)
        await svc.disconnect()

    got = await _queued_retain_flag(r.mqtt_port, device, device, token, probe, topic, publish)
    assert [(p.topic, p.retain, p.qos) for p in got] == [(topic, False, 1)]


# --- keepalive is enforced ------------------------------------------------------------------------


async def test_witness_plain_amqtt_never_drops_a_silent_client(plain: PlainAmqtt) -> None:
    c, _, _ = await RawClient.connect(plain.port, "silent", "silent", keepalive=1)
    assert not await c.closed_by_server(3.0)  # twice 1.5 × keepalive, and still open
    await c.close()


async def test_silent_device_is_dropped_after_one_and_a_half_keepalives_and_its_will_sent(
    running: Running,
) -> None:
    r = running
    ((device, token),) = r.register()
    user, password = Store(r.data_dir).accounts.service_credentials()
    watcher, _, _ = await RawClient.connect(r.mqtt_port, "watcher", user, password)
    await watcher.subscribe(f"mqttpush/{r.app_key}/d/{device}/s")
    loop = asyncio.get_running_loop()
    silent, code, _ = await RawClient.connect(
        r.mqtt_port,
        device,
        device,
        token,
        keepalive=1,
        will=(f"mqttpush/{r.app_key}/d/{device}/s", b"offline", 1, True),
    )
    assert code == 0
    started = loop.time()
    assert await silent.closed_by_server(10)
    assert loop.time() - started >= 1.0
    will = await watcher.next_publish(10)
    assert will is not None and will.payload == b"offline"
    await watcher.disconnect()
