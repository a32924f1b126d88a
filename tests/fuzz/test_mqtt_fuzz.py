"""A hypothesis-driven MQTT packet fuzzer against the live broker, on a fixed budget (issue 18 item 5).

Packets of every type with random fields, and valid packets mutated (bit flips, truncation, a
corrupted remaining-length field), each on its own connection, before CONNECT and after a
successful one. After its bytes the fuzzer half-closes the socket, so a broker waiting for the rest
of a truncated packet sees the end of the stream: whatever it answers, it must close the connection
within TIMEOUT, write no traceback to its log, and still serve a device at the end."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Iterator

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from tests.conftest import Running
from tests.fuzz.device import serves_a_device
from tests.mqtt_raw import RawClient, packet

EXAMPLES = 600
"""Per test (before / after CONNECT): one or two connections each, ~3 s a test on loopback."""
TIMEOUT = 5.0


def _prefixed(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


# A length-prefixed field: UTF-8 text, arbitrary bytes (not UTF-8, NUL, lone surrogates' bytes), or
# a prefix that lies about the length.
fields = st.one_of(
    st.text(max_size=40).map(lambda s: _prefixed(s.encode("utf-8", "surrogatepass"))),
    st.binary(max_size=40).map(_prefixed),
    st.tuples(st.integers(0, 65535), st.binary(max_size=40)).map(lambda t: struct.pack("!H", t[0]) + t[1]),
)
flags4 = st.integers(0, 15)
packet_ids = st.sampled_from([b"", b"\x00", b"\x00\x00", b"\x00\x01", b"\xff\xff"])


@st.composite
def connects(draw: st.DrawFn) -> bytes:
    protocol = draw(st.sampled_from([b"MQTT", b"MQIsdp", b"", b"mqtt", b"MQTT\x00"]) | st.binary(max_size=8))
    level = draw(st.sampled_from([3, 4, 5]) | st.integers(0, 255))
    connect_flags = draw(st.integers(0, 255))
    keepalive = draw(st.sampled_from([0, 1, 60, 65535]))
    payload = b"".join(draw(st.lists(fields, max_size=5)))
    body = _prefixed(protocol) + bytes([level, connect_flags]) + struct.pack("!H", keepalive) + payload
    return packet(0x10 | draw(st.sampled_from([0]) | flags4), body)


@st.composite
def publishes(draw: st.DrawFn) -> bytes:
    first = 0x30 | draw(flags4)  # every QoS (3 included), DUP and RETAIN
    return packet(first, draw(fields) + draw(packet_ids) + draw(st.binary(max_size=300)))


@st.composite
def subscribes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([0x80, 0xA0]))  # SUBSCRIBE, UNSUBSCRIBE
    first = kind | draw(st.sampled_from([2]) | flags4)
    topics = draw(st.lists(st.tuples(fields, st.integers(0, 255)), max_size=4))
    body = draw(packet_ids) + b"".join(f + (bytes([q]) if kind == 0x80 else b"") for f, q in topics)
    return packet(first, body)


@st.composite
def others(draw: st.DrawFn) -> bytes:
    """Every other type (CONNACK, PUBACK..PUBCOMP, SUBACK, UNSUBACK, PINGREQ/RESP, DISCONNECT, 0, 15)."""
    kind = draw(st.sampled_from([0, 2, 4, 5, 6, 7, 9, 11, 12, 13, 14, 15]))
    return packet((kind << 4) | draw(flags4), draw(st.binary(max_size=6)))


valid_shaped = st.one_of(connects(), publishes(), subscribes(), others())

texts = st.text(max_size=40).map(lambda s: _prefixed(s.encode("utf-8", "surrogatepass")))
ids = st.integers(0, 65535).map(lambda n: struct.pack("!H", n))


@st.composite
def well_formed(draw: st.DrawFn) -> bytes:
    """Packets a client may send after CONNECT, lengths and flags right, content random: these reach
    the broker's access rules and session state, not just its codec."""
    kind = draw(st.sampled_from(["publish", "subscribe", "unsubscribe", "ack", "ping", "disconnect"]))
    if kind == "publish":
        qos = draw(st.integers(0, 2))
        first = 0x30 | (qos << 1) | draw(st.integers(0, 1)) | (draw(st.integers(0, 1)) << 3 if qos else 0)
        return packet(first, draw(texts) + (draw(ids) if qos else b"") + draw(st.binary(max_size=300)))
    if kind == "subscribe":
        filters = draw(st.lists(st.tuples(texts, st.integers(0, 2)), min_size=1, max_size=4))
        return packet(0x82, draw(ids) + b"".join(f + bytes([q]) for f, q in filters))
    if kind == "unsubscribe":
        return packet(0xA2, draw(ids) + b"".join(draw(st.lists(texts, min_size=1, max_size=4))))
    if kind == "ack":  # PUBACK, PUBREC, PUBREL (flags 2), PUBCOMP for ids that may or may not be in flight
        first = draw(st.sampled_from([0x40, 0x50, 0x62, 0x70]))
        return packet(first, draw(ids))
    return b"\xc0\x00" if kind == "ping" else b"\xe0\x00"


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(valid_shaped | well_formed()))
    how = draw(st.sampled_from(["flip", "truncate", "length"]))
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif how == "truncate":
        del data[draw(st.integers(1, max(1, len(data) - 1))) :]
    else:
        end = 1
        while end < len(data) and data[end] & 0x80:
            end += 1
        # Any 1-5 bytes: overlong (5 continuation bytes), huge (up to 256 MB), short or long of the body.
        data[1 : end + 1] = draw(
            st.binary(min_size=1, max_size=5)
            | st.sampled_from([b"\xff\xff\xff\x7f", b"\xff\xff\xff\xff\x7f"])
        )
    return bytes(data)


streams = st.lists(st.one_of(well_formed(), valid_shaped, mutated()), min_size=1, max_size=4).map(b"".join)


class _Tracebacks(logging.Handler):
    """Every log record of the server (its thread logs through the root logger) with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.found: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.stack_info or "Traceback" in record.getMessage():
            self.found.append(record)


@pytest.fixture
def tracebacks() -> Iterator[_Tracebacks]:
    handler = _Tracebacks()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


async def _closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    """Send ``data`` then end the stream; everything the broker answers until it closes."""
    got = b""
    try:
        writer.write(data)
        writer.write_eof()
        async with asyncio.timeout(TIMEOUT):
            while chunk := await reader.read(4096):
                got += chunk
    except ConnectionError:
        pass  # a reset is a close too
    except TimeoutError:
        raise AssertionError(f"the broker neither closed nor finished within {TIMEOUT} s: {data!r}") from None
    finally:
        writer.close()
    return got


async def _before_connect(port: int, data: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _closes(reader, writer, data)


async def _after_connect(port: int, device: tuple[str, str], data: bytes) -> None:
    device_id, token = device
    client, code, _ = await RawClient.connect(port, device_id, device_id, token, timeout=TIMEOUT)
    assert code == 0, f"CONNACK {code}"
    await _closes(client.reader, client.writer, data)


def _no_tracebacks(tracebacks: _Tracebacks) -> None:
    assert not tracebacks.found, [
        (r.name, r.getMessage(), logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
        for r in tracebacks.found[:3]
    ]


def _settings() -> settings:
    return settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


def test_packets_before_connect(running: Running, tracebacks: _Tracebacks) -> None:
    @_settings()
    @given(data=streams)
    def fuzz(data: bytes) -> None:
        asyncio.run(_before_connect(running.mqtt_port, data))

    fuzz()
    asyncio.run(serves_a_device(running))
    _no_tracebacks(tracebacks)


def test_packets_after_connect(running: Running, tracebacks: _Tracebacks) -> None:
    ((device_id, token),) = running.register()

    @_settings()
    @given(data=streams)
    def fuzz(data: bytes) -> None:
        asyncio.run(_after_connect(running.mqtt_port, (device_id, token), data))

    fuzz()
    asyncio.run(serves_a_device(running))
    _no_tracebacks(tracebacks)
