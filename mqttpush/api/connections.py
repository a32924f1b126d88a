"""HTTP connection limits uvicorn lacks, as its httptools protocol with a guard around it.

uvicorn has no header timeout and httptools no header size limit: a client that never finishes
its headers (slowloris) held its connection forever, and a 200 KB header was read whole. Its
``limit_concurrency`` answers only once the headers are complete, in plain text. So, per
connection: the request line and headers must arrive within ``header_timeout`` (else 408, or a
silent close when nothing came), a body must not stall for longer (else 408), stay under ``max_header_bytes`` and ``MAX_HEADER_COUNT`` (else
431), and a connection beyond ``max_connections`` gets 503 at once. Every refusal is the JSON
error shape of docs/api.md and closes the connection.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_COUNT = 100
LINGER_SECONDS = 2.0
"""How long a refused connection's late bytes are read and dropped before it is closed."""

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    max_connections: int = 10_000
    max_header_bytes: int = 64 * 1024


class _HeadRefused(Exception):
    """Raised from a parser callback to stop parsing a request whose head is over a limit."""


def refusal(status: int, code: str, message: str, retry_after: int | None = None) -> bytes:
    """A complete HTTP/1.1 answer in the error shape that closes the connection."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = [
        b"HTTP/1.1 %d %s" % (status, _REASONS[status]),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
    ]
    if retry_after is not None:
        head.append(b"retry-after: %d" % retry_after)
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of :class:`ConnectionLimits`."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._in_head = False
        self._head_seen = 0
        """Bytes of the request line and complete header lines (exact, from the parser)."""
        self._head_raw = 0
        """Bytes of reads that fell wholly inside the head (catches one endless header line)."""
        self._header_count = 0
        self._refusal: bytes | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(
                refusal(
                    503,
                    "too_many_connections",
                    f"the server holds {self.limits.max_connections} HTTP connections already",
                    retry_after=1,
                )
            )
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self._disarm_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return
        if self.cycle is None or self.cycle.response_complete:
            self._arm_head_timer()  # a new request on a kept-alive connection: its head is timed too
        # A read that starts inside a head, or between requests, is all head while the head is
        # not complete after it (a read that starts in a body may end in the next head: not counted).
        all_head = self._in_head or self.cycle is None or self.cycle.response_complete
        super().data_received(data)
        if self._refusal is None and all_head and self._in_head:
            self._head_raw += len(data)
            self._check_head(in_parser=False)

    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:  # the parser stopped because a callback of ours refused
            self._refuse(self._refusal)
        else:  # the parser could not read the request: the error shape, not uvicorn's plain text
            self._refuse(refusal(400, "malformed_request", msg))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_seen = self._head_raw = self._header_count = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_seen += len(url)
        self._check_head(in_parser=True)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._head_seen += len(name) + len(value) + 4
        self._header_count += 1
        self._check_head(in_parser=True)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        super().on_headers_complete()
        self._arm_body_timer()  # disarmed at once by on_message_complete when there is no body

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._disarm_body_timer()
        self._arm_body_timer()

    def on_message_complete(self) -> None:
        self._disarm_body_timer()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm_body_timer()
        super().handle_websocket_upgrade()

    def _check_head(self, *, in_parser: bool) -> None:
        limit = self.limits.max_header_bytes
        if self._header_count > MAX_HEADER_COUNT:
            message = f"more than {MAX_HEADER_COUNT} request headers"
        elif max(self._head_seen, self._head_raw) > limit:
            message = f"request line and headers over {limit} bytes"
        else:
            return
        self._refusal = refusal(431, "headers_too_large", message)
        if in_parser:
            raise _HeadRefused(message)  # stops the parse; uvicorn then calls send_400_response
        self._refuse(self._refusal)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._in_head:
            seconds = self.limits.header_timeout
            self._refuse(
                refusal(408, "request_timeout", f"request headers not complete within {seconds:g} s")
            )
        else:
            self.transport.close()  # nothing came: close without an answer, as for an idle keep-alive

    def _arm_body_timer(self) -> None:
        if self._body_timer is None:
            self._body_timer = self.loop.call_later(self.limits.header_timeout, self._body_stalled)

    def _disarm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_stalled(self) -> None:
        """No body bytes for ``header_timeout`` seconds while the request's body is being read."""
        self._body_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:  # the app has not taken what came: the wait is ours, not the client's
            self._arm_body_timer()
        elif self.cycle is not None and self.cycle.response_started:
            self.transport.close()
        else:
            seconds = self.limits.header_timeout
            self._refuse(refusal(408, "request_timeout", f"request body stalled for {seconds:g} s"))

    def _refuse(self, answer: bytes) -> None:
        """Answer and close. Closing with unread bytes would send a reset that can overtake the
        answer, so: half-close, read and drop what still comes (``data_received``), and close when
        the client does or ``LINGER_SECONDS`` later."""
        self._refusal = answer
        self._disarm_head_timer()
        self._disarm_body_timer()
        if self.transport.is_closing():
            return
        self.transport.write(answer)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self._linger_over)

    def _linger_over(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpProtocol]:
    """The protocol class bound to ``limits``, for ``uvicorn.Config(http=...)`` (one instance a connection)."""

    class Bound(GuardedHttpProtocol):
        pass

    Bound.limits = limits
    return Bound
