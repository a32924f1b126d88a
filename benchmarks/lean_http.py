"""A lean keep-alive HTTP/1.1 client for load generation: raw asyncio streams, requests signed
by hand from the wire format in docs/api.md (HMAC-SHA256 over method, path, timestamp, nonce and
body hash), no mqttpush import.

httpx spends ~2 ms of client CPU a request; on a 2-core machine that measures the client, not
the server. This spends ~50 µs: one ``write`` per request, the response read with
``readuntil``/``readexactly`` on Content-Length (which every API answer carries).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import os
import socket
import time
from typing import Any
from urllib.parse import urlsplit


class HttpError(Exception):
    """A non-2xx answer: ``status`` and the API's stable error ``code`` (or the reason)."""

    def __init__(self, status: int, code: str, retry_after: str | None = None) -> None:
        super().__init__(f"{status} {code}")
        self.status, self.code = status, code
        self.retry_after = retry_after
        """The ``Retry-After`` header of a 429 or 503, if the answer had one."""


class SignedConnection:
    """One keep-alive connection to the API, one request at a time (open several for concurrency)."""

    def __init__(self, url: str, app_key: str, app_secret: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._key, self._secret = app_key, app_secret.encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._nonce_prefix = os.urandom(6).hex()
        self._seq = itertools.count()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            sock = self._writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert self._reader is not None
        return self._reader, self._writer

    def _signed(self, method: str, path: str, body: bytes) -> bytes:
        ts = str(int(time.time()))
        nonce = f"{self._nonce_prefix}{next(self._seq):010d}"
        text = f"{method}\n{path}\n{ts}\n{nonce}\n{hashlib.sha256(body).hexdigest()}"
        sig = hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-MQTTPush-Key: {self._key}\r\nX-MQTTPush-Timestamp: {ts}\r\n"
            f"X-MQTTPush-Nonce: {nonce}\r\nX-MQTTPush-Signature: {sig}\r\n\r\n"
        )
        return head.encode() + body

    async def request(self, method: str, path: str, doc: Any = None) -> Any:
        """Send one signed request; returns the decoded JSON answer or raises :class:`HttpError`."""
        body = json.dumps(doc, separators=(",", ":")).encode() if doc is not None else b""
        reader, writer = await self._connect()
        writer.write(self._signed(method, path, body))
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            raise
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, close, retry_after = 0, False, None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "retry-after":
                retry_after = value.strip()
            elif name == "connection" and value.strip().lower() == "close":
                close = True
            elif name == "transfer-encoding":
                raise HttpError(status, "chunked answers are not expected from the API")
        payload = await reader.readexactly(length) if length else b""
        if close:
            writer.close()
        if status >= 300:
            try:  # a load balancer's own error page is HTML, not the API's JSON
                answer = json.loads(payload) if payload else None
            except ValueError:
                answer = None
            code = (answer or {}).get("error", {}).get("code") if isinstance(answer, dict) else None
            raise HttpError(status, code or lines[0], retry_after)
        return json.loads(payload) if payload else None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
