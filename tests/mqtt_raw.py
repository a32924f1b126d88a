"""A minimal MQTT 3.1.1 client over asyncio streams, for tests that need to see raw packets
(CONNACK and SUBACK codes, RETAIN and DUP flags) or to open hundreds of connections at once."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass


def _str(s: str) -> bytes:
    b = s.encode()
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
    client_id: str,
    *,
    protocol: str = "MQTT",
    level: int = 4,
    flags: int = 0x02,
    keepalive: int = 60,
    properties: bytes | None = None,
) -> bytes:
    """A bare CONNECT (clean session, no credentials); ``properties`` (MQTT 5) follow the keepalive."""
    variable = _str(protocol) + bytes([level, flags]) + struct.pack("!H", keepalive)
    if properties is not None:
        variable += _remaining(len(properties)) + properties
    return packet(0x10, variable + _str(client_id))


async def first_answer(port: int, data: bytes, timeout: float) -> tuple[bytes, bool]:
    """Send ``data`` on a new connection; returns (everything the server sent, whether it closed)
    once it closes or ``timeout`` passes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    got = b""
    closed = False
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(1024):
                got += chunk
            closed = True
    except TimeoutError:
        pass
    except ConnectionError:
        closed = True
    writer.close()
    return got, closed


@dataclass
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._next_id = 0
        self.auto_ack = True

    @classmethod
    async def connect(
        cls,
        port: int,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        *,
        clean: bool = True,
        keepalive: int = 60,
        will: tuple[str, bytes, int, bool] | None = None,
        timeout: float = 5.0,
    ) -> tuple[RawClient, int, bool]:
        """Open a connection and send CONNECT; returns (client, CONNACK return code, session present)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        c = cls(reader, writer)
        flags = 0x02 if clean else 0
        payload = _str(client_id)
        if will is not None:
            topic, msg, qos, retain = will
            flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
            payload += _str(topic) + struct.pack("!H", len(msg)) + msg
        if username is not None:
            flags |= 0x80
            payload += _str(username)
        if password is not None:
            flags |= 0x40
            payload += _str(password)
        body = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload
        writer.write(packet(0x10, body))
        first, data = await asyncio.wait_for(c.read_packet(), timeout)
        assert first >> 4 == 2, f"expected CONNACK, got type {first >> 4}"
        return c, data[1], bool(data[0] & 1)

    async def read_packet(self) -> tuple[int, bytes]:
        first = (await self.reader.readexactly(1))[0]
        mult, length = 1, 0
        while True:
            b = (await self.reader.readexactly(1))[0]
            length += (b & 127) * mult
            mult *= 128
            if not b & 128:
                break
        return first, await self.reader.readexactly(length)

    def _id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    async def subscribe(self, *filters: str, qos: int = 1, timeout: float = 5.0) -> list[int]:
        """SUBSCRIBE and return the SUBACK return codes (publishes read meanwhile are kept)."""
        pid = self._id()
        body = struct.pack("!H", pid) + b"".join(_str(f) + bytes([qos]) for f in filters)
        self.writer.write(packet(0x82, body))
        self.pending: list[Publish] = getattr(self, "pending", [])
        while True:
            first, data = await asyncio.wait_for(self.read_packet(), timeout)
            if first >> 4 == 9 and struct.unpack("!H", data[:2])[0] == pid:
                return list(data[2:])
            if first >> 4 == 3:
                self.pending.append(self._on_publish(first, data))

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        body = _str(topic) + (struct.pack("!H", self._id()) if qos else b"") + payload
        self.writer.write(packet(0x30 | (qos << 1) | int(retain), body))

    def _on_publish(self, first: int, data: bytes) -> Publish:
        qos = (first >> 1) & 3
        tlen = struct.unpack("!H", data[:2])[0]
        topic = data[2 : 2 + tlen].decode()
        pos = 2 + tlen
        pid = None
        if qos:
            pid = struct.unpack("!H", data[pos : pos + 2])[0]
            pos += 2
            if self.auto_ack:
                self.writer.write(packet(0x40, struct.pack("!H", pid)))
        return Publish(topic, data[pos:], qos, bool(first & 1), bool(first & 8), pid)

    async def next_publish(self, timeout: float) -> Publish | None:
        """The next PUBLISH, or None if none comes within ``timeout`` (or the server closes)."""
        pending = getattr(self, "pending", [])
        if pending:
            return pending.pop(0)
        try:
            while True:
                first, data = await asyncio.wait_for(self.read_packet(), timeout)
                if first >> 4 == 3:
                    return self._on_publish(first, data)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            return None

    async def collect(self, quiet: float) -> list[Publish]:
        """Every PUBLISH until the connection is quiet for ``quiet`` seconds."""
        out = []
        while (p := await self.next_publish(quiet)) is not None:
            out.append(p)
        return out

    async def closed_by_server(self, timeout: float) -> bool:
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(1024), timeout)
                if not data:
                    return True
        except TimeoutError:
            return False
        except ConnectionError:
            return True

    async def disconnect(self) -> None:
        self.writer.write(b"\xe0\x00")
        await self.close()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
