"""MQTT 3.1.1 packets on the hot path, as bytes: framing, PUBLISH, acks, SUBSCRIBE/UNSUBSCRIBE.

amqtt builds a packet object graph (fixed header, variable header, payload) per packet and awaits
the stream three times to read one; a push broker handles tens of thousands of PUBLISH/PUBACK a
second, so these are parsed out of one buffer and encoded straight to bytes. Every malformed
packet raises ``Malformed`` (the connection is closed, MQTT-4.8.0-1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

# first byte of each packet (type << 4 | fixed flags)
CONNECT: Final = 0x10
PUBLISH: Final = 3  # type only: its flags carry dup/qos/retain
PUBACK: Final = 0x40
PUBREC: Final = 0x50
PUBREL: Final = 0x62
PUBCOMP: Final = 0x70
SUBSCRIBE: Final = 0x82
UNSUBSCRIBE: Final = 0xA2
PINGREQ: Final = 0xC0
DISCONNECT: Final = 0xE0

PINGRESP_BYTES: Final = b"\xd0\x00"


class Malformed(Exception):
    """A packet that breaks MQTT 3.1.1; the connection must be closed."""


class TooLarge(Malformed):
    """A packet over the broker's size limit; refused from its header, before it is buffered."""


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        digit = n & 0x7F
        n >>= 7
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def encode_publish(topic: bytes, payload: bytes, qos: int, retain: bool, packet_id: int, dup: bool) -> bytes:
    """One PUBLISH; ``topic`` is the UTF-8 topic name, ``packet_id`` ignored for QoS 0."""
    first = 0x30 | (qos << 1) | (1 if retain else 0) | (8 if dup and qos else 0)
    size = len(topic)
    if qos:
        length = 4 + size + len(payload)
        head = bytes((first,)) + remaining_length(length) + size.to_bytes(2, "big") + topic
        return b"".join((head, packet_id.to_bytes(2, "big"), payload))
    length = 2 + size + len(payload)
    return b"".join((bytes((first,)), remaining_length(length), size.to_bytes(2, "big"), topic, payload))


def encode_ack(first: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL, PUBCOMP or UNSUBACK for ``packet_id``."""
    return bytes((first, 2, packet_id >> 8, packet_id & 0xFF))


def encode_suback(packet_id: int, codes: list[int]) -> bytes:
    return b"".join((b"\x90", remaining_length(2 + len(codes)), packet_id.to_bytes(2, "big"), bytes(codes)))


def encode_connack(session_present: bool, code: int) -> bytes:
    return bytes((0x20, 2, 1 if session_present else 0, code))


UNACCEPTABLE_PROTOCOL_LEVEL: Final = 0x01


def connect_refusal(body: bytes) -> int:
    """The CONNACK code a CONNECT's protocol earns from a 3.1.1 broker: 0 to go on, or
    ``UNACCEPTABLE_PROTOCOL_LEVEL`` for another MQTT version (MQTT-3.1.2-2): name ``MQTT`` at a
    level other than 4 (MQTT 5 is level 5) or MQTT 3.1's ``MQIsdp`` (level 3), which knows that
    code too. A name that is no MQTT's raises ``Malformed``: closed without CONNACK (MQTT-3.1.2-1).

    Read before the rest of CONNECT: an MQTT 5 CONNECT has properties where 3.1.1 has the client
    id, so parsing it as 3.1.1 waits for bytes that never come.
    """
    name, at = _string(body, 0)
    if at >= len(body):
        raise Malformed("CONNECT without a protocol level")
    level = body[at]
    if name == "MQTT":
        return 0 if level == 4 else UNACCEPTABLE_PROTOCOL_LEVEL
    if name == "MQIsdp":
        return UNACCEPTABLE_PROTOCOL_LEVEL
    raise Malformed(f"CONNECT for protocol {name!r} (MQTT-3.1.2-1)")


def split(buf: bytearray, limit: int, on_packet: Callable[[int, bytes], bool]) -> int:
    """Hand each complete packet in ``buf`` to ``on_packet(first_byte, body)``; returns bytes used.

    ``on_packet`` returns False to stop (the connection is ending). A packet whose announced
    remaining length exceeds ``limit`` raises ``TooLarge`` as soon as its header is in.
    """
    pos = 0
    end_of_data = len(buf)
    while end_of_data - pos >= 2:
        i = pos + 1
        length = 0
        shift = 0
        while True:
            if i >= end_of_data:
                return pos
            digit = buf[i]
            i += 1
            length |= (digit & 0x7F) << shift
            if not digit & 0x80:
                break
            shift += 7
            if shift > 21:
                raise Malformed("remaining length longer than 4 bytes")
        if length > limit:
            raise TooLarge(f"packet of {length} bytes, the limit is {limit}")
        end = i + length
        if end > end_of_data:
            return pos
        first = buf[pos]
        pos = end
        if not on_packet(first, bytes(buf[i:end])):
            return pos
    return pos


def _string(body: bytes, at: int) -> tuple[str, int]:
    if at + 2 > len(body):
        raise Malformed("truncated string")
    end = at + 2 + ((body[at] << 8) | body[at + 1])
    if end > len(body):
        raise Malformed("truncated string")
    try:
        text = body[at + 2 : end].decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("string is not UTF-8 (MQTT-1.5.3-1)") from None
    if "\x00" in text:
        raise Malformed("string contains U+0000 (MQTT-1.5.3-2)")
    return text, end


def packet_id(body: bytes) -> int:
    """The packet id of an ack (PUBACK, PUBREC, PUBREL, PUBCOMP)."""
    if len(body) != 2:
        raise Malformed(f"ack of {len(body)} bytes, expected 2")
    pid = (body[0] << 8) | body[1]
    if pid == 0:
        raise Malformed("packet id 0 (MQTT-2.3.1-1)")
    return pid


def parse_publish(first: int, body: bytes) -> tuple[str, bytes, int, bool, int]:
    """``(topic, payload, qos, retain, packet_id)`` of a PUBLISH (packet_id 0 for QoS 0)."""
    qos = (first >> 1) & 3
    if qos == 3:
        raise Malformed("PUBLISH with QoS 3 (MQTT-3.3.1-4)")
    topic, at = _string(body, 0)
    pid = 0
    if qos:
        if at + 2 > len(body):
            raise Malformed("PUBLISH without packet id")
        pid = (body[at] << 8) | body[at + 1]
        if pid == 0:
            raise Malformed("packet id 0 (MQTT-2.3.1-1)")
        at += 2
    return topic, body[at:], qos, bool(first & 1), pid


def parse_subscribe(body: bytes) -> tuple[int, list[tuple[str, int]]]:
    pid = _leading_id(body)
    at = 2
    wanted: list[tuple[str, int]] = []
    while at < len(body):
        topic_filter, at = _string(body, at)
        if at >= len(body):
            raise Malformed("SUBSCRIBE filter without requested QoS")
        qos = body[at]
        at += 1
        if qos > 2:
            raise Malformed("SUBSCRIBE requested QoS byte is not 0, 1 or 2 (MQTT-3.8.3-4)")
        wanted.append((topic_filter, qos))
    if not wanted:
        raise Malformed("SUBSCRIBE without filters (MQTT-3.8.3-3)")
    return pid, wanted


def parse_unsubscribe(body: bytes) -> tuple[int, list[str]]:
    pid = _leading_id(body)
    at = 2
    filters: list[str] = []
    while at < len(body):
        topic_filter, at = _string(body, at)
        filters.append(topic_filter)
    if not filters:
        raise Malformed("UNSUBSCRIBE without filters (MQTT-3.10.3-2)")
    return pid, filters


def _leading_id(body: bytes) -> int:
    if len(body) < 2:
        raise Malformed("missing packet id")
    pid = (body[0] << 8) | body[1]
    if pid == 0:
        raise Malformed("packet id 0 (MQTT-2.3.1-1)")
    return pid
