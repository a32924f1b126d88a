"""A tiny HTTP/1.1 server in front of a real mqttpush server, for the clients' retry tests.

Each request it reads takes the next scripted action, then (with none left) is proxied:
``Refuse(status, code, retry_after)`` answers in the API's error shape without forwarding,
``Drop(forward=True)`` forwards the request and closes the connection without answering (the
server did the work, the client never hears of it), ``Drop(forward=False)`` closes at once. Every
request it read is kept in ``seen``, so a test counts the attempts a client made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.utils import formatdate

import httpx

_HOP = {"host", "connection", "content-length", "transfer-encoding", "keep-alive"}


@dataclass(frozen=True)
class Refuse:
    status: int
    code: str
    retry_after: str | None = None
    """The ``Retry-After`` value as sent (delta-seconds or an HTTP-date); None: no header."""


@dataclass(frozen=True)
class Drop:
    forward: bool = True


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Front:
    upstream: str
    script: list[Refuse | Drop] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def requests(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path == path]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with httpx.AsyncClient(base_url=self.upstream, timeout=30) as http:
            try:
                while request := await _read(reader):
                    self.seen.append(request)
                    action = self.script.pop(0) if self.script else None
                    if isinstance(action, Refuse):
                        body = json.dumps({"error": {"code": action.code, "message": "scripted refusal"}})
                        headers = {"Content-Type": "application/json", "Date": formatdate(usegmt=True)}
                        if action.retry_after is not None:
                            headers["Retry-After"] = action.retry_after
                        _write(writer, action.status, headers, body.encode())
                        await writer.drain()
                        continue
                    upstream = await http.request(
                        request.method,
                        request.path,
                        headers={k: v for k, v in request.headers.items() if k not in _HOP},
                        content=request.body,
                    )
                    if isinstance(action, Drop):
                        return
                    headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
                    _write(writer, upstream.status_code, headers, upstream.content)
                    await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                return
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()


async def _read(reader: asyncio.StreamReader) -> Seen | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Seen(method, path, headers, body)


def _write(writer: asyncio.StreamWriter, status: int, headers: dict[str, str], body: bytes) -> None:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


@contextlib.asynccontextmanager
async def front(upstream: str, *script: Refuse | Drop) -> AsyncIterator[Front]:
    """A :class:`Front` on 127.0.0.1 (an ephemeral port) before ``upstream``, for the block."""
    fake = Front(upstream, list(script))
    server = await asyncio.start_server(fake._handle, "127.0.0.1", 0)
    fake.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield fake
    finally:
        server.close()
        await server.wait_closed()
