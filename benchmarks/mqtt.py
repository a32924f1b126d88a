"""A lean MQTT 3.1.1 client on ``asyncio.Protocol``: thousands of connections in one process.

Only what the benchmarks need: CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH (QoS 0 and 1, in
and out), PUBACK, PINGREQ, DISCONNECT. Incoming QoS 1 publishes are acknowledged in one write
per ``data_received`` call; nothing is parsed that the caller does not use.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Sequence
from typing import cast

CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP = 2, 3, 4, 9, 13
DISCONNECT = b"\xe0\x00"
PINGREQ = b"\xc0\x00"

OnPublish = Callable[["Connection", bytes, bytes, int, bool], None]
"""``(connection, topic, payload, qos, retain)``."""
OnPuback = Callable[["Connection", int], None]


class ConnectRefused(Exception):
    """CONNACK with a non-zero return code."""

    def __init__(self, code: int) -> None:
        super().__init__(f"CONNACK return code {code}")
        self.code = code


def _str(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _remaining(len(body)) + body


def connect_packet(
    client_id: str, username: str | None, password: str | None, *, keepalive: int, clean: bool
) -> bytes:
    flags = 0x02 if clean else 0
    payload = _str(client_id.encode())
    if username is not None:
        flags |= 0x80
        payload += _str(username.encode())
    if password is not None:
        flags |= 0x40
        payload += _str(password.encode())
    body = _str(b"MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload
    return packet(0x10, body)


def subscribe_packet(pid: int, filters: Sequence[str], qos: int) -> bytes:
    body = struct.pack("!H", pid) + b"".join(_str(f.encode()) + bytes([qos]) for f in filters)
    return packet(0x82, body)


def publish_packet(topic: bytes, payload: bytes, *, qos: int, retain: bool, pid: int = 0) -> bytes:
    body = _str(topic) + (struct.pack("!H", pid) if qos else b"") + payload
    return packet(0x30 | (qos << 1) | int(retain), body)


def _puback(pid: int) -> bytes:
    return b"\x40\x02" + pid.to_bytes(2, "big")


class Connection(asyncio.Protocol):
    """One MQTT connection. Create with :func:`open_connection`."""

    def __init__(
        self, on_publish: OnPublish | None = None, on_puback: OnPuback | None = None, tag: int = 0
    ) -> None:
        loop = asyncio.get_running_loop()
        self.tag = tag
        self.on_publish = on_publish
        self.on_puback = on_puback
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[tuple[int, bool]] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._buf = bytearray()
        self._pid = 0

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        err = ConnectionError(f"connection closed: {exc!r}" if exc else "connection closed by peer")
        if not self.connack.done():
            self.connack.set_exception(err)
        for fut in self._subacks.values():
            if not fut.done():
                fut.set_exception(err)
        self._subacks.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        # Mark the futures' exceptions as retrieved: nobody may be waiting any more.
        if self.connack.done() and not self.connack.cancelled():
            self.connack.exception()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        n = len(buf)
        pos = 0
        acks: list[bytes] = []
        while n - pos >= 2:
            first = buf[pos]
            mult, length, i = 1, 0, pos + 1
            complete = False
            while i < n:
                b = buf[i]
                length += (b & 127) * mult
                mult *= 128
                i += 1
                if not b & 128:
                    complete = True
                    break
            if not complete or i + length > n:
                break
            end = i + length
            ptype = first >> 4
            if ptype == PUBLISH:
                tlen = (buf[i] << 8) | buf[i + 1]
                p = i + 2 + tlen
                topic = bytes(buf[i + 2 : p])
                qos = (first >> 1) & 3
                if qos:
                    acks.append(_puback((buf[p] << 8) | buf[p + 1]))
                    p += 2
                if self.on_publish is not None:
                    self.on_publish(self, topic, bytes(buf[p:end]), qos, bool(first & 1))
            elif ptype == PUBACK:
                if self.on_puback is not None:
                    self.on_puback(self, (buf[i] << 8) | buf[i + 1])
            elif ptype == CONNACK:
                if not self.connack.done():
                    self.connack.set_result((buf[i + 1], bool(buf[i] & 1)))
            elif ptype == SUBACK:
                fut = self._subacks.pop((buf[i] << 8) | buf[i + 1], None)
                if fut is not None and not fut.done():
                    fut.set_result(list(buf[i + 2 : end]))
            pos = end
        if pos:
            del buf[:pos]
        if acks and self.transport is not None:
            self.transport.write(b"".join(acks))

    # --- operations -----------------------------------------------------------------------------

    def next_pid(self) -> int:
        self._pid = self._pid % 65535 + 1
        return self._pid

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def subscribe(self, filters: Sequence[str], qos: int = 1, timeout: float = 30.0) -> list[int]:
        if self.closed.done():  # closed since CONNACK: no SUBACK would ever come
            raise ConnectionError("connection closed before SUBSCRIBE")
        pid = self.next_pid()
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._subacks[pid] = fut
        self.write(subscribe_packet(pid, filters, qos))
        return await asyncio.wait_for(fut, timeout)

    def publish(self, topic: bytes, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Send one PUBLISH; returns its packet id (0 for QoS 0). PUBACKs go to ``on_puback``."""
        pid = self.next_pid() if qos else 0
        self.write(publish_packet(topic, payload, qos=qos, retain=retain, pid=pid))
        return pid

    def ping(self) -> None:
        self.write(PINGREQ)

    def disconnect(self) -> None:
        """Send DISCONNECT and close the socket."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(DISCONNECT)
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and not self.closed.done()


async def open_connection(
    host: str,
    port: int,
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    *,
    keepalive: int = 300,
    clean: bool = True,
    timeout: float = 30.0,
    on_publish: OnPublish | None = None,
    on_puback: OnPuback | None = None,
    tag: int = 0,
) -> Connection:
    """Connect, send CONNECT and wait for CONNACK; raises :class:`ConnectRefused` on a refusal."""
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(
        loop.create_connection(lambda: Connection(on_publish, on_puback, tag), host, port), timeout
    )
    conn.write(connect_packet(client_id, username, password, keepalive=keepalive, clean=clean))
    try:
        code, _session_present = await asyncio.wait_for(asyncio.shield(conn.connack), timeout)
    except BaseException:
        conn.abort()
        raise
    if code:
        conn.abort()
        raise ConnectRefused(code)
    return conn
