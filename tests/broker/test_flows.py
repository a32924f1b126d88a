"""The broker's own message path (connection.py, wire.py) seen from raw clients: QoS 2 both ways,
resumption of QoS 2 flows, malformed packets, Will ACL, packets cut at any byte."""

from __future__ import annotations

import asyncio
import struct

import pytest

from mqttpush.store import Store
from tests.conftest import Running
from tests.mqtt_raw import RawClient, packet

QUIET = 0.5


async def _read(c: RawClient, kind: int) -> bytes:
    """The next packet of type ``kind`` (PUBLISH excluded), other packets skipped."""
    while True:
        first, data = await asyncio.wait_for(c.read_packet(), 5)
        if first >> 4 == kind:
            return data


async def _service(r: Running) -> RawClient:
    user, password = Store(r.data_dir).accounts.service_credentials()
    svc, code, _ = await RawClient.connect(r.mqtt_port, "svc", user, password)
    assert code == 0
    return svc


async def test_qos2_inbound_is_routed_once_and_outbound_runs_the_four_packet_flow(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    topic = f"mqttpush/{r.app_key}/d/{device}/m/q2"
    dev, code, _ = await RawClient.connect(r.mqtt_port, device, device, token)
    assert code == 0
    assert await dev.subscribe(f"mqttpush/{r.app_key}/d/{device}/m/+", qos=2) == [2]
    dev.auto_ack = False
    svc = await _service(r)
    publish = packet(0x34, struct.pack("!H", len(topic)) + topic.encode() + b"\x00\x09" + b"hello")
    svc.writer.write(publish)
    assert await _read(svc, 5) == b"\x00\x09"  # PUBREC
    svc.writer.write(bytes([0x3C]) + publish[1:])  # the same packet again with DUP, before PUBREL
    assert await _read(svc, 5) == b"\x00\x09"
    svc.writer.write(packet(0x62, b"\x00\x09"))  # PUBREL
    assert await _read(svc, 7) == b"\x00\x09"  # PUBCOMP

    got = await dev.next_publish(5)
    assert got is not None and (got.topic, got.payload, got.qos) == (topic, b"hello", 2)
    dev.writer.write(packet(0x50, struct.pack("!H", got.packet_id)))  # PUBREC
    assert await _read(dev, 6) == struct.pack("!H", got.packet_id)  # PUBREL
    dev.writer.write(packet(0x70, struct.pack("!H", got.packet_id)))  # PUBCOMP
    assert await dev.next_publish(QUIET) is None  # routed once, not twice
    await svc.disconnect()
    await dev.disconnect()


async def test_qos2_outbound_resumes_after_reconnect(running: Running) -> None:
    """Unanswered PUBLISH comes again with DUP; after PUBREC, the PUBREL comes again (MQTT-4.4.0-1)."""
    r = running
    ((device, token),) = r.register()
    topic = f"mqttpush/{r.app_key}/d/{device}/m/q2"
    dev, _, _ = await RawClient.connect(r.mqtt_port, device, device, token, clean=False)
    assert await dev.subscribe(f"mqttpush/{r.app_key}/d/{device}/m/+", qos=2) == [2]
    dev.auto_ack = False
    svc = await _service(r)
    svc.publish(topic, b"x", qos=2)
    first = await dev.next_publish(5)
    assert first is not None and not first.dup
    await dev.close()

    dev, code, present = await RawClient.connect(r.mqtt_port, device, device, token, clean=False)
    assert (code, present) == (0, True)
    dev.auto_ack = False
    again = await dev.next_publish(5)
    assert again is not None and again.dup and again.packet_id == first.packet_id
    dev.writer.write(packet(0x50, struct.pack("!H", first.packet_id)))  # PUBREC, then drop
    assert await _read(dev, 6) == struct.pack("!H", first.packet_id)
    await dev.close()

    dev, _, _ = await RawClient.connect(r.mqtt_port, device, device, token, clean=False)
    assert await _read(dev, 6) == struct.pack("!H", first.packet_id)  # PUBREL resent, not the PUBLISH
    dev.writer.write(packet(0x70, struct.pack("!H", first.packet_id)))
    dev.auto_ack = False
    assert await dev.next_publish(QUIET) is None
    await dev.disconnect()
    await svc.disconnect()


@pytest.mark.parametrize(
    "bad",
    [
        packet(0x36, b"\x00\x01a\x00\x01x"),  # PUBLISH QoS 3
        packet(0x30, b"\x00\x03a/#x"),  # wildcard in a topic name
        packet(0x30, b"\x00\x00x"),  # empty topic name
        packet(0x80, b"\x00\x01\x00\x01a\x01"),  # SUBSCRIBE with reserved flags 0 (MQTT-3.8.1-1)
        packet(0x82, b"\x00\x01"),  # SUBSCRIBE without a filter
        packet(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x01x"),  # a second CONNECT
        packet(0x20, b"\x00\x00"),  # CONNACK from a client
        b"\x30\xff\xff\xff\xff\x01",  # remaining length over 4 bytes
        b"\x30\x81\x80\x80\x01",  # announces 2 MiB, over the 256 KiB limit: refused unread
    ],
)
async def test_malformed_packet_closes_only_that_connection(running: Running, bad: bytes) -> None:
    r = running
    ((device, token),) = r.register()
    c, code, _ = await RawClient.connect(r.mqtt_port, device, device, token)
    assert code == 0
    c.writer.write(bad)
    assert await c.closed_by_server(5)
    ok, code, _ = await RawClient.connect(r.mqtt_port, device, device, token)
    assert code == 0
    assert await ok.subscribe(f"mqttpush/{r.app_key}/d/{device}/m/+") == [1]
    await ok.disconnect()


async def test_packets_cut_at_every_byte_are_understood(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    topic = f"mqttpush/{r.app_key}/d/{device}/m/+"
    c, _, _ = await RawClient.connect(r.mqtt_port, device, device, token)
    stream = (
        packet(0x82, b"\x00\x05" + struct.pack("!H", len(topic)) + topic.encode() + b"\x01") + b"\xc0\x00"
    )
    for byte in stream:
        c.writer.write(bytes([byte]))
        await c.writer.drain()
    assert await _read(c, 9) == b"\x00\x05\x01"  # SUBACK
    assert await _read(c, 13) == b""  # PINGRESP
    await c.disconnect()


async def test_will_goes_through_the_publish_acl(running: Running) -> None:
    r = running
    (victim, victim_token), (rogue, rogue_token) = r.register(2)
    v, _, _ = await RawClient.connect(r.mqtt_port, victim, victim, victim_token)
    assert await v.subscribe(f"mqttpush/{r.app_key}/d/{victim}/m/+") == [1]
    forged = (f"mqttpush/{r.app_key}/d/{victim}/m/forged", b'{"id":"forged"}', 1, True)
    c, code, _ = await RawClient.connect(r.mqtt_port, rogue, rogue, rogue_token, will=forged)
    assert code == 0
    await c.close()  # abnormal end: the Will would be due, but the rogue may not publish there
    assert await v.next_publish(QUIET) is None
    await v.disconnect()


async def test_inflight_window_refills_as_acks_arrive_and_keeps_order(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    dev, _, _ = await RawClient.connect(r.mqtt_port, device, device, token)
    assert await dev.subscribe(f"mqttpush/{r.app_key}/d/{device}/m/+") == [1]
    dev.auto_ack = False
    svc = await _service(r)
    for i in range(250):
        svc.publish(f"mqttpush/{r.app_key}/d/{device}/m/{i}", b"x", qos=1)
    seen: list[str] = []
    while len(seen) < 250:
        batch = await dev.collect(QUIET)
        assert 0 < len(batch) <= 100  # never more than the window unacknowledged
        for p in batch:
            seen.append(p.topic.rsplit("/", 1)[1])
            dev.writer.write(packet(0x40, struct.pack("!H", p.packet_id)))
    assert seen == [str(i) for i in range(250)]
    await svc.disconnect()
    await dev.disconnect()


async def test_persistent_session_gets_each_offline_message_once_on_reconnect(running: Running) -> None:
    """Queued while offline, delivered once with RETAIN 0; no retained replay on top (retained
    messages are sent for a new SUBSCRIBE, MQTT-3.3.1-6, not again for a resumed session)."""
    r = running
    ((device, token),) = r.register()
    dev, _, _ = await RawClient.connect(r.mqtt_port, device, device, token, clean=False)
    assert await dev.subscribe(f"mqttpush/{r.app_key}/d/{device}/m/+") == [1]
    await dev.disconnect()
    msg_id = await asyncio.to_thread(r.push, [device])  # retained in the inbox and queued in the session
    await asyncio.to_thread(r.wait_state, msg_id, device, "published")
    dev, code, present = await RawClient.connect(r.mqtt_port, device, device, token, clean=False)
    assert (code, present) == (0, True)
    got = await dev.collect(QUIET)
    assert [(p.topic.rsplit("/", 1)[1], p.retain) for p in got] == [(msg_id, False)]
    await dev.disconnect()


async def test_overflowed_offline_queue_is_made_good_from_the_retained_inbox(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    dev, _, _ = await RawClient.connect(r.mqtt_port, device, device, token, clean=False)
    assert await dev.subscribe(f"mqttpush/{r.app_key}/d/{device}/m/+") == [1]
    await dev.disconnect()
    svc = await _service(r)
    topics = [f"mqttpush/{r.app_key}/d/{device}/m/{i}" for i in range(1005)]  # queue holds 1000
    for topic in topics:
        svc.publish(topic, b"x", qos=1, retain=True)
    while await _read(svc, 4) != struct.pack("!H", len(topics)):
        pass  # PUBACKs come in order: the last one means every message has been routed
    await svc.disconnect()
    dev, _, present = await RawClient.connect(r.mqtt_port, device, device, token, clean=False)
    assert present
    got = await dev.collect(QUIET)
    assert [p.topic for p in got if not p.retain] == topics[5:]  # the queue, in order
    assert sorted(p.topic for p in got if p.retain) == sorted(topics[:5])  # then what it dropped
    await dev.disconnect()
