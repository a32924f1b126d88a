"""Issue 5 broker guarantees, with raw clients: QoS 1 redelivery across reconnects and takeover,
inflight window, packet size limit — each beside a witness of plain amqtt 0.12.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from mqttpush.store import Store
from tests.broker.test_amqtt_defects import QUIET, PlainAmqtt, plain  # noqa: F401  (fixture)
from tests.conftest import Running
from tests.mqtt_raw import RawClient, packet


async def _unacked_then_reconnect(
    port: int,
    client_id: str,
    user: str,
    password: str | None,
    topic: str,
    publish: Callable[[], Awaitable[None]],
    takeover: bool = False,
) -> list[object]:
    """A persistent session gets a QoS 1 message and does not acknowledge it, then comes back."""
    c, code, _ = await RawClient.connect(port, client_id, user, password, clean=False)
    assert code == 0
    assert await c.subscribe(topic.rsplit("/", 1)[0] + "/+") == [1]
    c.auto_ack = False
    await publish()
    first = await c.next_publish(10)
    assert first is not None and not first.dup
    if not takeover:
        await c.close()  # network drop: no DISCONNECT, no PUBACK
    again, code, present = await RawClient.connect(port, client_id, user, password, clean=False)
    assert (code, present) == (0, True)
    got = await again.collect(QUIET * 2)
    await again.disconnect()
    if takeover:
        await c.close()
    return got


async def test_witness_plain_amqtt_forgets_unacknowledged_qos1_messages(plain: PlainAmqtt) -> None:  # noqa: F811
    topic = "mqttpush/app/d/dev/m/1"
    got = await _unacked_then_reconnect(
        plain.port, "dev", "dev", None, topic, lambda: plain.broker.internal_message_broadcast(topic, b"x", 1)
    )
    assert got == []


async def _service_publish(r: Running, topic: str) -> None:
    user, password = Store(r.data_dir).accounts.service_credentials()
    svc, _, _ = await RawClient.connect(r.mqtt_port, "svc", user, password)
    svc.publish(topic, json.dumps({"id": "q1"}).encode(), qos=1)
    await svc.disconnect()


async def test_unacknowledged_qos1_is_resent_with_dup_after_reconnect(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    topic = f"mqttpush/{r.app_key}/d/{device}/m/q1"
    got = await _unacked_then_reconnect(
        r.mqtt_port, device, device, token, topic, lambda: _service_publish(r, topic)
    )
    assert [(p.topic, p.dup, p.qos, p.retain) for p in got] == [(topic, True, 1, False)]  # type: ignore[attr-defined]


async def test_session_takeover_keeps_messages_in_flight(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    topic = f"mqttpush/{r.app_key}/d/{device}/m/q1"
    got = await _unacked_then_reconnect(
        r.mqtt_port, device, device, token, topic, lambda: _service_publish(r, topic), takeover=True
    )
    assert [(p.topic, p.dup) for p in got] == [(topic, True)]  # type: ignore[attr-defined]


async def test_queued_while_offline_arrive_in_order(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    user, password = Store(r.data_dir).accounts.service_credentials()
    c, _, _ = await RawClient.connect(r.mqtt_port, device, device, token, clean=False)
    await c.subscribe(f"mqttpush/{r.app_key}/d/{device}/m/+")
    await c.disconnect()
    svc, _, _ = await RawClient.connect(r.mqtt_port, "svc", user, password)
    assert await svc.subscribe(f"mqttpush/{r.app_key}/d/{device}/m/+") == [1]
    for i in range(20):
        svc.publish(f"mqttpush/{r.app_key}/d/{device}/m/n{i:02d}", b"{}", qos=1)
    assert len(await svc.collect(QUIET)) == 20  # routed (and queued for the device)
    c, _, present = await RawClient.connect(r.mqtt_port, device, device, token, clean=False)
    assert present
    got = await c.collect(QUIET * 2)
    assert [p.topic.rsplit("/", 1)[1] for p in got] == [f"n{i:02d}" for i in range(20)]
    assert {(p.qos, p.retain) for p in got} == {(1, False)}
    await c.disconnect()
    await svc.disconnect()


async def test_inflight_window_bounds_unacknowledged_messages(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    user, password = Store(r.data_dir).accounts.service_credentials()
    c, _, _ = await RawClient.connect(r.mqtt_port, device, device, token)
    await c.subscribe(f"mqttpush/{r.app_key}/d/{device}/m/+")
    c.auto_ack = False
    svc, _, _ = await RawClient.connect(r.mqtt_port, "svc", user, password)
    for i in range(150):
        svc.publish(f"mqttpush/{r.app_key}/d/{device}/m/w{i}", b"{}", qos=1)
    first = await c.collect(QUIET * 2)
    assert len(first) == 100  # the window: nothing more until PUBACKs come back
    for p in first:
        c.writer.write(packet(0x40, (p.packet_id or 0).to_bytes(2, "big")))
    rest = await c.collect(QUIET * 2)
    assert len(rest) == 50
    await c.close()
    await svc.disconnect()


async def test_witness_plain_amqtt_accepts_any_packet_size(plain: PlainAmqtt) -> None:  # noqa: F811
    c, _, _ = await RawClient.connect(plain.port, "big", "big")
    c.publish("t/big", b"x" * (1 << 20), qos=0)
    assert await c.subscribe("t/+") == [1]  # still connected after a 1 MiB packet
    await c.close()


async def test_oversized_packet_closes_the_connection(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    c, _, _ = await RawClient.connect(r.mqtt_port, device, device, token)
    c.publish(f"mqttpush/{r.app_key}/d/{device}/r", b"x" * (1 << 20), qos=0)
    assert await c.closed_by_server(10)
    ok, code, _ = await RawClient.connect(r.mqtt_port, device, device, token)  # and the server is fine
    assert code == 0
    await ok.disconnect()


async def test_witness_plain_amqtt_upgrades_qos(plain: PlainAmqtt) -> None:  # noqa: F811
    sub, _, _ = await RawClient.connect(plain.port, "sub", "sub")
    assert await sub.subscribe("t/+", qos=1) == [1]
    pub, _, _ = await RawClient.connect(plain.port, "pub", "pub")
    pub.publish("t/1", b"x", qos=0)
    got = await sub.next_publish(10)
    assert got is not None and got.qos == 1  # QoS 0 published, delivered as QoS 1
    await sub.close()
    await pub.close()


async def test_delivered_qos_is_the_minimum_of_published_and_granted(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    user, password = Store(r.data_dir).accounts.service_credentials()
    dev, _, _ = await RawClient.connect(r.mqtt_port, device, device, token)
    assert await dev.subscribe(f"mqttpush/{r.app_key}/d/{device}/m/+", qos=1) == [1]
    svc, _, _ = await RawClient.connect(r.mqtt_port, "svc", user, password)
    svc.publish(f"mqttpush/{r.app_key}/d/{device}/m/q0", b"{}", qos=0)
    svc.publish(f"mqttpush/{r.app_key}/d/{device}/m/q1", b"{}", qos=1)
    first, second = await dev.next_publish(10), await dev.next_publish(10)
    assert first is not None and second is not None
    assert sorted((p.topic.rsplit("/", 1)[1], p.qos) for p in (first, second)) == [("q0", 0), ("q1", 1)]
    await dev.disconnect()
    await svc.disconnect()


def test_fd_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    from mqttpush.server import raise_fd_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = raise_fd_limit()
    assert limit >= soft
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == (
        hard if hard != resource.RLIM_INFINITY else limit
    )


def test_listen_backlog_holds_a_reconnect_storm(running: Running) -> None:
    """amqtt listened with asyncio's default backlog of 100: a storm of CONNECTs overflowed it and
    clients waited out TCP's SYN backoff. The kernel shows a listening socket's backlog as Send-Q."""
    import subprocess

    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{running.mqtt_port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    backlog = int(out[2])  # State Recv-Q Send-Q Local Peer
    with open("/proc/sys/net/core/somaxconn") as f:
        somaxconn = int(f.read())
    assert backlog == min(4096, somaxconn) and backlog > 100


async def _silent_socket_closed(port: int, within: float) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(reader.read(1), within) == b""
    except TimeoutError:
        return False
    finally:
        writer.close()


async def test_witness_plain_amqtt_waits_forever_for_connect(plain: PlainAmqtt) -> None:  # noqa: F811
    assert not await _silent_socket_closed(plain.port, 1.5)


async def test_idle_socket_without_connect_is_closed() -> None:
    from mqttpush.broker import PushBroker

    async def nobody(client_id: str, user: str | None, password: str | None) -> None:
        return None

    broker = PushBroker(host="127.0.0.1", port=0, authenticator=nobody, connect_timeout=0.5)
    await broker.start()
    try:
        assert await _silent_socket_closed(broker.port, 10)
    finally:
        await broker.shutdown()
