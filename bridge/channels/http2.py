"""A lean HTTP/2 client for vendor endpoints: a few TLS connections to one origin, each carrying
up to the server's ``SETTINGS_MAX_CONCURRENT_STREAMS`` requests at once (capped by ours).

Why not httpx: with hundreds of streams in flight, httpcore spent ~2 ms of CPU per request (a
lock, a cancel scope and an async-library probe per request and per read), more than a vendor
forward may cost at thousands a second. This is h2's state machine (the same one httpcore drives)
as an ``asyncio.Protocol``: events in, frames out, everything a connection is to send in one loop
turn written at once. Only what vendor APIs need: small request bodies with flow control, whole
responses, GOAWAY and resets; the connection is replaced once it is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from bridge.channels.base import VendorRequest, VendorResponse


class Http2Error(Exception):
    """The request may not have reached the vendor: connection failed or lost, stream reset, timeout."""


class _GoawayStateMachine(h2.connection.H2ConnectionStateMachine):
    """h2's connection state machine, except that a received GOAWAY leaves the connection open:
    h2 closes it at once (python-hyper/h2#1181), which would make the answers to the streams the
    server still finishes protocol errors. No new stream is opened on it (it is no longer usable)."""

    def __init__(self) -> None:
        super().__init__()
        self._transitions = {
            **self._transitions,
            (h2.connection.ConnectionState.CLIENT_OPEN, h2.connection.ConnectionInputs.RECV_GOAWAY): (
                None,
                h2.connection.ConnectionState.CLIENT_OPEN,
            ),
        }


@dataclass(slots=True)
class _Stream:
    done: asyncio.Future[None]
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection (client side)."""

    def __init__(self, max_streams: int) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self._h2 = h2.connection.H2Connection(config)
        self._h2.state_machine = _GoawayStateMachine()
        self._h2.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.ENABLE_PUSH: 0}
        )
        self._max_streams = max_streams
        self._streams: dict[int, _Stream] = {}
        self._transport: asyncio.WriteTransport | None = None
        self._flush_pending = False
        self._window = asyncio.Event()
        self.usable = True
        self.settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Done once the server's first SETTINGS (its stream limit) arrived, or the connection failed."""
        self.freed: Callable[[bool], None] | None = None
        """The pool's: told when one stream slot frees up (False) or when anything may have changed (True)."""

    @property
    def capacity(self) -> int:
        """Streams this connection may open now."""
        if not self.usable:
            return 0
        limit = min(self._max_streams, self._h2.remote_settings.max_concurrent_streams)
        return limit - len(self._streams)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.WriteTransport, transport)  # uvloop's SSL transport is not a subclass
        self._h2.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail(Http2Error(f"protocol error: {exc}"))
            return
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    for name, value in event.headers or ():
                        if name == b":status":
                            stream.status = int(value)
                        else:
                            stream.headers[name.decode("latin-1").lower()] = value.decode("latin-1")
            elif isinstance(event, h2.events.DataReceived):
                stream = self._streams.get(event.stream_id)
                if stream is not None and event.data:
                    stream.body += event.data
                if event.flow_controlled_length:
                    self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self._end(event.stream_id, None)
            elif isinstance(event, h2.events.StreamReset):
                self._end(event.stream_id, Http2Error(f"stream reset (error code {event.error_code})"))
            elif isinstance(event, h2.events.WindowUpdated):
                self._window.set()
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                if not self.settled.done():
                    self.settled.set_result(None)
                self._release(everyone=True)
            elif isinstance(event, h2.events.ConnectionTerminated):
                # GOAWAY: streams above last_stream_id were not processed; the rest may finish.
                self.usable = False
                last = event.last_stream_id if event.last_stream_id is not None else 0
                for stream_id in [s for s in self._streams if s > last]:
                    self._end(
                        stream_id, Http2Error(f"connection closed by the server (GOAWAY {event.error_code})")
                    )
                self._close_if_drained()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(Http2Error(f"connection lost: {exc!r}" if exc else "connection closed"))

    def _fail(self, exc: Http2Error) -> None:
        self.usable = False
        if not self.settled.done():
            self.settled.set_exception(exc)
            self.settled.exception()  # whoever opened it may be gone: not an unretrieved error
        for stream_id in list(self._streams):
            self._end(stream_id, exc)
        self._window.set()
        self._release(everyone=True)
        if self._transport is not None:
            self._transport.close()

    def _end(self, stream_id: int, exc: Http2Error | None) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None and not stream.done.done():
            if exc is None:
                stream.done.set_result(None)
            else:
                stream.done.set_exception(exc)
        self._close_if_drained()
        self._release()

    def _release(self, everyone: bool = False) -> None:
        if self.freed is not None:
            self.freed(everyone)

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _flush_soon(self) -> None:
        # Everything sent during one loop turn leaves in one write (one TLS record, one syscall).
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flushed)

    def _flushed(self) -> None:
        self._flush_pending = False
        self._flush()

    async def request(
        self, request: VendorRequest, authority: str, path: str, timeout: float
    ) -> VendorResponse:
        try:
            stream_id = self._h2.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError as exc:  # ids run out after 2^30 requests
            self.usable = False
            self._release(everyone=True)
            raise Http2Error("stream ids exhausted") from exc
        stream = _Stream(asyncio.get_running_loop().create_future())
        self._streams[stream_id] = stream
        headers = [
            (":method", request.method),
            (":authority", authority),
            (":scheme", "https"),
            (":path", path),
            *request.headers.items(),
            ("content-length", str(len(request.body))),
        ]
        try:
            async with asyncio.timeout(timeout):
                self._h2.send_headers(stream_id, headers, end_stream=not request.body)
                await self._send_body(stream_id, request.body)
                self._flush_soon()
                await stream.done
        except TimeoutError:
            self._cancel(stream_id)
            raise Http2Error(f"no answer within {timeout} s") from None
        except h2.exceptions.H2Error as exc:
            self._cancel(stream_id)
            raise Http2Error(f"stream failed: {exc!r}") from exc
        except asyncio.CancelledError:
            self._cancel(stream_id)
            raise
        return VendorResponse(stream.status, stream.headers, bytes(stream.body))

    async def _send_body(self, stream_id: int, body: bytes) -> None:
        view = memoryview(body)
        while view:
            if not self.usable:
                raise Http2Error("connection closed while sending")
            size = min(
                self._h2.local_flow_control_window(stream_id), self._h2.max_outbound_frame_size, len(view)
            )
            if size <= 0:
                self._window.clear()
                self._flush()
                await self._window.wait()
                continue
            self._h2.send_data(stream_id, bytes(view[:size]), end_stream=size == len(view))
            view = view[size:]

    def _cancel(self, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is None:
            return
        with contextlib.suppress(h2.exceptions.H2Error):
            self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        self._flush_soon()
        self._close_if_drained()
        self._release()

    def _close_if_drained(self) -> None:
        # After GOAWAY (or with stream ids used up) nothing else will use the connection.
        if not self.usable and not self._streams:
            self.close()

    def close(self) -> None:
        self.usable = False
        if self._transport is not None and not self._transport.is_closing():
            with contextlib.suppress(h2.exceptions.H2Error):
                self._h2.close_connection()
                self._flush()
            self._transport.close()


class Http2Pool:
    """Requests to one origin over at most ``connections`` HTTP/2 connections, each with at most
    ``max_streams`` (and the server's ``SETTINGS_MAX_CONCURRENT_STREAMS``) requests in flight.
    A new connection is opened only when the open ones are full; callers beyond that wait."""

    def __init__(
        self,
        base_url: str,
        verify: ssl.SSLContext | bool,
        *,
        connections: int = 1,
        max_streams: int = 1000,
        timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"an https:// origin is required, got {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or 443
        self.authority = parts.netloc
        context = verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()
        if verify is False:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["h2"])
        self._ssl = context
        self._max_connections = connections
        self._max_streams = max_streams
        self._timeout = timeout
        self._connections: list[_Connection] = []
        self._opening = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.opened = 0
        """Connections opened so far."""

    async def request(self, request: VendorRequest) -> VendorResponse:
        """Send ``request`` (its URL on this origin) and return the whole answer; raises
        :class:`Http2Error` when the connection fails, the stream is reset or ``timeout`` passes."""
        parts = urlsplit(request.url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        connection = await self._acquire()
        return await connection.request(request, self.authority, path or "/", self._timeout)

    async def _acquire(self) -> _Connection:
        while True:
            self._connections = [c for c in self._connections if c.usable]
            best = max(self._connections, key=lambda c: c.capacity, default=None)
            if best is not None and best.capacity > 0:
                return best
            # While a connection is being opened, its streams are not known yet: wait for them
            # rather than open more connections at once.
            if not self._opening and len(self._connections) < self._max_connections:
                return await self._open()
            # One waiter woken per freed stream, not all of them (hundreds wait at full load).
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    async def _open(self) -> _Connection:
        self._opening += 1
        try:
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self._timeout):
                    transport, connection = await loop.create_connection(
                        lambda: _Connection(self._max_streams),
                        self._host,
                        self._port,
                        ssl=self._ssl,
                        server_hostname=self._host,
                    )
                    try:
                        ssl_object = transport.get_extra_info("ssl_object")
                        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                            raise Http2Error(f"{self.authority} does not offer HTTP/2 (ALPN h2)")
                        await connection.settled
                    except BaseException:  # no SETTINGS in time, or cancelled: not left open
                        transport.close()
                        raise
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                raise Http2Error(f"cannot connect to {self.authority}: {exc!r}") from exc
            connection.freed = self._wake
            self._connections.append(connection)
            self.opened += 1
            return connection
        finally:
            self._opening -= 1
            self._wake(everyone=True)

    def _wake(self, everyone: bool) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if not everyone:
                    return

    async def aclose(self) -> None:
        for connection in self._connections:
            connection.close()
        self._connections.clear()
