"""MQTT over WebSocket (RFC 6455, subprotocol ``mqtt``), for browsers running MQTT.js.

``WebSocketProtocol`` answers the HTTP upgrade, then unframes what the client sends and hands the
bytes to whatever protocol sits on its ``WsTransport`` (first amqtt's stream, which reads the
CONNECT; then our ``Connection``), and frames what that protocol writes as binary messages. To
the MQTT side a WebSocket connection is just another transport.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import Callable
from typing import Any, cast

log = logging.getLogger("mqttpush.broker")

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HANDSHAKE = 16 * 1024
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def accept_key(key: str) -> str:
    digest = hashlib.sha1(key.encode() + _GUID, usedforsecurity=False).digest()  # fixed by RFC 6455
    return base64.b64encode(digest).decode()


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final server frame."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + payload


def _valid_key(key: str) -> bool:
    """Sec-WebSocket-Key: base64 of 16 bytes (RFC 6455 4.1)."""
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


def _unmask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


class WsTransport(asyncio.Transport):
    """What the MQTT side writes to and reads from: WebSocket messages over the real transport."""

    def __init__(self, real: asyncio.Transport) -> None:
        super().__init__()
        self._real = real
        self._protocol: asyncio.BaseProtocol | None = None

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._real.is_closing():
            self._real.write(frame(OP_BINARY, bytes(data)))

    def is_closing(self) -> bool:
        return self._real.is_closing()

    def close(self) -> None:
        if not self._real.is_closing():
            self._real.write(frame(OP_CLOSE, (1000).to_bytes(2, "big")))
            self._real.close()

    def abort(self) -> None:
        self._real.abort()

    def get_write_buffer_size(self) -> int:
        return self._real.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._real.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._real.pause_reading()

    def resume_reading(self) -> None:
        self._real.resume_reading()

    def is_reading(self) -> bool:
        return self._real.is_reading()

    def can_write_eof(self) -> bool:
        return False


class WebSocketProtocol(asyncio.Protocol):
    """Server side of one WebSocket connection carrying MQTT.

    ``on_open(ws_transport)`` is called once the upgrade is answered; it must put a protocol on
    the transport (``ws_transport.set_protocol``) before returning.
    """

    def __init__(self, on_open: Callable[[WsTransport], None], max_message: int) -> None:
        self._on_open = on_open
        self._max_message = max_message
        self._real: asyncio.Transport | None = None
        self._ws: WsTransport | None = None
        self._buf = bytearray()
        self._fragments = bytearray()
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport by duck type: uvloop's TCPTransport and SSL transport implement the
        # interface without subclassing asyncio.Transport (an isinstance check refused every client).
        self._real = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._buf += data
        if self._ws is None and not self._handshake():
            return
        try:
            self._frames()
        except ValueError as exc:
            log.info("websocket closed: %s", exc)
            self._fail(1002)

    def eof_received(self) -> bool:
        self._lost()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def pause_writing(self) -> None:
        if self._ws is not None and self._ws._protocol is not None:
            self._ws._protocol.pause_writing()

    def resume_writing(self) -> None:
        if self._ws is not None and self._ws._protocol is not None:
            self._ws._protocol.resume_writing()

    # --- the upgrade ---------------------------------------------------------------------------

    def _handshake(self) -> bool:
        assert self._real is not None
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > _MAX_HANDSHAKE:
                self._refuse(431, "request headers too large")
            return False
        head = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 4]
        request, *lines = head.split("\r\n")
        headers: dict[str, str] = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        parts = request.split(" ")
        if len(parts) != 3 or parts[0] != "GET" or not parts[2].startswith("HTTP/1.1"):
            self._refuse(400, "expected GET ... HTTP/1.1")
            return False
        key = headers.get("sec-websocket-key", "")
        if (
            "websocket" not in headers.get("upgrade", "").lower()
            or "upgrade" not in headers.get("connection", "").lower()
            or headers.get("sec-websocket-version") != "13"
            or not _valid_key(key)
        ):
            self._refuse(426, "WebSocket upgrade (version 13) required")
            return False
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        response = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {accept_key(key)}",
        ]
        for name in ("mqtt", "mqttv3.1"):  # MQTT-6.0.0-3; MQTT.js and paho offer "mqtt"
            if name in offered:
                response.append(f"Sec-WebSocket-Protocol: {name}")
                break
        self._real.write(("\r\n".join(response) + "\r\n\r\n").encode())
        self._ws = WsTransport(self._real)
        self._on_open(self._ws)
        return True

    def _refuse(self, status: int, reason: str) -> None:
        assert self._real is not None
        body = reason.encode()
        self._real.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        self._closed = True
        self._real.close()

    # --- frames --------------------------------------------------------------------------------

    def _frames(self) -> None:
        buf = self._buf
        while not self._closed and len(buf) >= 2:
            first, second = buf[0], buf[1]
            if first & 0x70:
                raise ValueError("reserved bits set (no extension was negotiated)")
            if not second & 0x80:
                raise ValueError("client frame not masked (RFC 6455 5.1)")
            length = second & 0x7F
            at = 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, at = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, at = int.from_bytes(buf[2:10], "big"), 10
            if length > self._max_message:
                raise ValueError(f"frame of {length} bytes, the limit is {self._max_message}")
            if first & 0x08 and (length > 125 or not first & 0x80):
                raise ValueError("control frame fragmented or over 125 bytes (RFC 6455 5.5)")
            if len(buf) < at + 4 + length:
                return
            payload = _unmask(bytes(buf[at + 4 : at + 4 + length]), bytes(buf[at : at + 4]))
            del buf[: at + 4 + length]
            self._on_frame(first & 0x80 != 0, first & 0x0F, payload)

    def _on_frame(self, final: bool, opcode: int, payload: bytes) -> None:
        assert self._real is not None and self._ws is not None
        if opcode in (OP_CONT, OP_BINARY):
            self._fragments += payload
            if len(self._fragments) > self._max_message:
                raise ValueError("message over the limit")
            if final:
                data = bytes(self._fragments)
                self._fragments.clear()
                if data:
                    self._ws.get_protocol().data_received(data)  # type: ignore[attr-defined]
        elif opcode == OP_PING:
            self._real.write(frame(OP_PONG, payload))
        elif opcode == OP_PONG:
            pass
        elif opcode == OP_CLOSE:
            code = payload[:2] if len(payload) >= 2 else (1000).to_bytes(2, "big")
            self._real.write(frame(OP_CLOSE, code))
            self._closed = True
            self._real.close()
            self._lost()
        else:  # text frames are not MQTT (MQTT-6.0.0-1)
            raise ValueError(f"opcode {opcode:#x} is not allowed for MQTT")

    def _fail(self, code: int) -> None:
        assert self._real is not None
        if not self._real.is_closing():
            self._real.write(frame(OP_CLOSE, code.to_bytes(2, "big")))
            self._real.close()
        self._closed = True
        self._lost()

    def _lost(self, exc: Exception | None = None) -> None:
        ws, self._ws = self._ws, None
        if ws is not None and ws._protocol is not None:
            ws._protocol.connection_lost(exc)
