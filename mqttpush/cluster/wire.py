"""What broker nodes and bridges say to each other on NATS (docs/scale-out.md, "Processes"). Pure: no I/O.

| subject                          | from → to                         | payload                      | reply        |
|----------------------------------|-----------------------------------|------------------------------|--------------|
| ``mqttpush.dev.{app}.{device}``  | bridge → the node holding device  | :func:`encode_publish`       | ``1`` taken, ``0`` not |
| ``mqttpush.bcast.{app}``         | bridge → every node               | :func:`encode_publish`       | none         |
| ``mqttpush.route``               | bridge → every node               | :func:`encode_publish`       | none         |
| ``mqttpush.session.{app}.{dev}`` | node → every node                 | :func:`encode_session`       | none         |
| ``mqttpush.up`` (queue ``bridges``) | node → one bridge              | :func:`encode_batch`         | ``1`` once stored |

A device's subject exists while a node holds the device subscribed to its inbox: NATS answers
"no responders" to a request nobody holds, which the bridge reads as "connected nowhere" (the
delivery waits in the store). App keys and device ids are ``[A-Za-z0-9_-]`` (``mqttpush.ids``),
valid NATS subject tokens as they are.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from urllib.parse import urlparse

PREFIX = "mqttpush"
BROADCAST_ALL = f"{PREFIX}.bcast.*"
ROUTE = f"{PREFIX}.route"
SESSION_ALL = f"{PREFIX}.session.>"
UPLINK = f"{PREFIX}.up"
UPLINK_QUEUE = "bridges"
TAKEN = b"1"
NOT_TAKEN = b"0"

_NODE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_PUBLISH_HEAD = struct.Struct("!dH")  # expires_at (inf: never), topic length
_ITEM_HEAD = struct.Struct("!HI")  # topic length, payload length


def device_subject(app: str, device: str) -> str:
    return f"{PREFIX}.dev.{app}.{device}"


def broadcast_subject(app: str) -> str:
    return f"{PREFIX}.bcast.{app}"


def session_subject(app: str, device: str) -> str:
    return f"{PREFIX}.session.{app}.{device}"


def parse_servers(value: str) -> list[str]:
    """``nats://H:P[,nats://H:P…]`` → the server URLs; ValueError with the reason otherwise."""
    servers = [part.strip() for part in value.split(",") if part.strip()]
    if not servers:
        raise ValueError("give at least one nats://HOST:PORT")
    for server in servers:
        parsed = urlparse(server)
        try:
            port = parsed.port
        except ValueError:
            port = None
        if parsed.scheme != "nats" or not parsed.hostname or port is None:
            raise ValueError(f"{server!r} is not nats://HOST:PORT")
    return servers


def valid_node_id(node_id: str) -> bool:
    """1-64 of ``[A-Za-z0-9_.-]``: it names the node's lock file in the data dir."""
    return _NODE_ID.fullmatch(node_id) is not None


def encode_publish(topic: str, payload: bytes, expires_at: float | None) -> bytes:
    """One MQTT message for a node to hand to its sessions: topic, payload and expiry."""
    raw = topic.encode()
    return _PUBLISH_HEAD.pack(math.inf if expires_at is None else expires_at, len(raw)) + raw + payload


def decode_publish(data: bytes) -> tuple[str, bytes, float]:
    """``(topic, payload, expires_at)``; ValueError for bytes that are not one."""
    if len(data) < _PUBLISH_HEAD.size:
        raise ValueError("short publish frame")
    expires_at, n = _PUBLISH_HEAD.unpack_from(data)
    start = _PUBLISH_HEAD.size
    if len(data) < start + n:
        raise ValueError("publish frame shorter than its topic")
    return data[start : start + n].decode(), data[start + n :], expires_at


def encode_batch(items: list[tuple[str, bytes]]) -> bytes:
    """Client publishes (receipts, presence, push requests) going to a bridge, in order."""
    out = bytearray()
    for topic, payload in items:
        raw = topic.encode()
        out += _ITEM_HEAD.pack(len(raw), len(payload)) + raw + payload
    return bytes(out)


def decode_batch(data: bytes) -> list[tuple[str, bytes]]:
    """The items of :func:`encode_batch`; ValueError for a frame cut short."""
    items: list[tuple[str, bytes]] = []
    at, size = 0, _ITEM_HEAD.size
    while at < len(data):
        if len(data) < at + size:
            raise ValueError("batch item head cut short")
        tlen, plen = _ITEM_HEAD.unpack_from(data, at)
        at += size
        if len(data) < at + tlen + plen:
            raise ValueError("batch item cut short")
        items.append((data[at : at + tlen].decode(), data[at + tlen : at + tlen + plen]))
        at += tlen + plen
    return items


@dataclass(frozen=True, slots=True, order=True)
class SessionKey:
    """Which of two sessions of one device wins: the later CONNECT, then the greater node id.

    Compared as a tuple, so two nodes that each hear of the other's CONNECT agree on one winner
    whatever order the announcements come in (the loser closes its session)."""

    connected_at: float
    node_id: str


def encode_session(key: SessionKey) -> bytes:
    return json.dumps({"at": key.connected_at, "node": key.node_id}).encode()


def decode_session(data: bytes) -> SessionKey:
    """ValueError for anything but an :func:`encode_session` document."""
    try:
        doc = json.loads(data)
        at, node = doc["at"], doc["node"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"bad session announcement: {exc}") from None
    if not isinstance(at, int | float) or not isinstance(node, str):
        raise ValueError("bad session announcement")
    return SessionKey(float(at), node)
