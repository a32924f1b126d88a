"""The broker's byte-level codec (mqttpush/broker/wire.py) against the MQTT 3.1.1 encoding rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqttpush.broker import wire
from tests.mqtt_raw import packet

topics = st.text(
    alphabet=st.characters(blacklist_characters="\x00+#", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=80,
)


@given(
    topics,
    st.binary(max_size=300),
    st.sampled_from([0, 1, 2]),
    st.booleans(),
    st.integers(1, 65535),
    st.booleans(),
)
def test_publish_round_trips(topic: str, payload: bytes, qos: int, retain: bool, pid: int, dup: bool) -> None:
    data = wire.encode_publish(topic.encode(), payload, qos, retain, pid, dup)
    got: list[tuple[int, bytes]] = []
    assert wire.split(bytearray(data), 1 << 20, lambda first, body: got.append((first, body)) or True) == len(
        data
    )
    ((first, body),) = got
    assert first >> 4 == wire.PUBLISH
    assert bool(first & 8) == (dup and qos > 0)  # MQTT-3.3.1-2: DUP is 0 for QoS 0
    assert wire.parse_publish(first, body) == (topic, payload, qos, retain, pid if qos else 0)


@given(st.lists(st.binary(max_size=200), min_size=1, max_size=20), st.data())
def test_split_finds_packets_however_the_stream_is_cut(bodies: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(packet(0x30, b) for b in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    buf = bytearray()
    got: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        buf += stream[start:end]
        used = wire.split(buf, 1 << 20, lambda _first, body: got.append(body) or True)
        del buf[:used]
    assert got == bodies and not buf


@pytest.mark.parametrize("n", [0, 127, 128, 16383, 16384, 2097151, 2097152, 268435455])
def test_remaining_length_is_the_spec_varint(n: int) -> None:
    encoded = wire.remaining_length(n)
    assert len(encoded) == (1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4)
    assert sum((b & 0x7F) << (7 * i) for i, b in enumerate(encoded)) == n


def test_oversized_packet_is_refused_from_its_header() -> None:
    header = bytes([0x30]) + wire.remaining_length(300)
    with pytest.raises(wire.TooLarge):
        wire.split(bytearray(header), 256, lambda *_: True)


@pytest.mark.parametrize(
    ("first", "body"),
    [
        (0x36, b"\x00\x01a\x00\x01"),  # QoS 3
        (0x32, b"\x00\x01a\x00\x00"),  # packet id 0
        (0x32, b"\x00\x01a"),  # no packet id
        (0x30, b"\x00\x05ab"),  # topic longer than the packet
        (0x30, b"\x00\x02\xc3\x28"),  # not UTF-8
        (0x30, b"\x00\x01\x00"),  # U+0000
    ],
)
def test_malformed_publish(first: int, body: bytes) -> None:
    with pytest.raises(wire.Malformed):
        wire.parse_publish(first, body)


def test_subscribe_and_unsubscribe_parse_and_refuse_malformed() -> None:
    assert wire.parse_subscribe(b"\x00\x07\x00\x01a\x01\x00\x03b/#\x02") == (7, [("a", 1), ("b/#", 2)])
    assert wire.parse_unsubscribe(b"\x00\x07\x00\x01a\x00\x01b") == (7, ["a", "b"])
    for bad in (b"\x00\x07", b"\x00\x07\x00\x01a", b"\x00\x07\x00\x01a\x03", b"\x00\x00\x00\x01a\x01"):
        with pytest.raises(wire.Malformed):
            wire.parse_subscribe(bad)
    with pytest.raises(wire.Malformed):
        wire.parse_unsubscribe(b"\x00\x07")


def test_five_byte_remaining_length_is_malformed() -> None:
    with pytest.raises(wire.Malformed):
        wire.split(bytearray(b"\x30\xff\xff\xff\xff\x01"), 1 << 30, lambda *_: True)
