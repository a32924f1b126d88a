"""The lean HTTP/2 client (``bridge.channels.http2``) against a raw ``h2`` server over TLS on
127.0.0.1: stream limits, how many connections, GOAWAY, resets, lost connections, timeouts and a
server without HTTP/2. The server side is h2's state machine driven by hand, so a test decides when
(and whether) each stream is answered and can count what the server really sees."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
import pytest

from bridge.channels.base import VendorRequest, VendorResponse
from bridge.channels.http2 import Http2Error, Http2Pool
from tests.fakes.tls import HOST, make_ca

WAIT = 3.0
"""Longest a test waits for anything; a working client needs a fraction of it."""


@dataclass(eq=False)
class Request:
    """One request as the server received it (headers and the whole body)."""

    connection: ServerConnection
    stream_id: int
    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray, repr=False)

    @property
    def path(self) -> str:
        return self.headers[":path"]

    def respond(self, status: int, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()) -> None:
        self.connection.respond(self.stream_id, status, body, headers)

    def reset(self, code: h2.errors.ErrorCodes) -> None:
        self.connection.reset(self.stream_id, code)


def answer_soon(request: Request) -> None:
    """The default handler: 200 with ``<path> <body>`` as the body, one loop turn later (so that
    streams overlap as they would with a real server)."""
    answer = f"{request.path} ".encode() + bytes(request.body)
    asyncio.get_running_loop().call_soon(request.respond, 200, answer)


class ServerConnection(asyncio.Protocol):
    """The server side of one HTTP/2 connection."""

    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: server.max_streams},
        )
        self.transport: asyncio.WriteTransport | None = None
        self.partial: dict[int, Request] = {}
        self.open: set[int] = set()
        """Streams the client opened that are not finished on the server's side."""
        self.max_open = 0
        self.client_resets: dict[int, int] = {}
        """Streams the client reset, with the error code."""
        self.closed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.append(self)
        if self.server.speak:
            self.h2.initiate_connection()
            self.flush()
        self.server.changed()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.server.errors.append(exc)
            self.flush()
            self.abort()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                assert event.stream_id is not None and event.headers is not None
                headers = {str(name): str(value) for name, value in event.headers}
                self.partial[event.stream_id] = Request(self, event.stream_id, headers)
                self.open.add(event.stream_id)
                self.max_open = max(self.max_open, len(self.open))
            elif isinstance(event, h2.events.DataReceived):
                assert event.stream_id is not None
                if event.stream_id in self.partial and event.data:
                    self.partial[event.stream_id].body += event.data
                if event.flow_controlled_length:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                assert event.stream_id is not None
                request = self.partial.pop(event.stream_id)
                self.server.requests.append(request)
                self.server.on_request(request)
            elif isinstance(event, h2.events.StreamReset):
                assert event.stream_id is not None
                self.client_resets[event.stream_id] = int(event.error_code or 0)
                self.open.discard(event.stream_id)
                self.partial.pop(event.stream_id, None)
        self.flush()
        self.server.changed()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open.clear()
        self.closed.set()
        self.server.changed()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def respond(self, stream_id: int, status: int, body: bytes, headers: Iterable[tuple[str, str]]) -> None:
        if stream_id not in self.open:  # reset by the client meanwhile
            return
        assert len(body) <= self.h2.local_flow_control_window(stream_id), "responses here are small"
        all_headers = [(":status", str(status)), *headers, ("content-length", str(len(body)))]
        self.h2.send_headers(stream_id, all_headers, end_stream=not body)
        if body:
            self.h2.send_data(stream_id, body, end_stream=True)
        self.open.discard(stream_id)
        self.flush()
        self.server.changed()

    def reset(self, stream_id: int, code: h2.errors.ErrorCodes) -> None:
        self.h2.reset_stream(stream_id, code)
        self.open.discard(stream_id)
        self.flush()
        self.server.changed()

    def goaway(self, last_stream_id: int) -> None:
        """Send GOAWAY, written by hand: h2 would refuse to answer the streams it still lets finish."""
        frame = hyperframe.frame.GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = h2.errors.ErrorCodes.NO_ERROR
        self.flush()
        assert self.transport is not None
        self.transport.write(frame.serialize())

    def abort(self) -> None:
        assert self.transport is not None
        self.transport.abort()


class H2Server:
    """A raw HTTP/2 server over TLS on 127.0.0.1, port 0. Each whole request goes to ``on_request``,
    which answers it now, later or never; ``until`` awaits a condition on what the server saw."""

    def __init__(
        self,
        cert_dir: Path,
        *,
        max_streams: int = 1000,
        on_request: Callable[[Request], None] = answer_soon,
        alpn: tuple[str, ...] | None = ("h2",),
        speak: bool = True,
    ) -> None:
        self.ca_file, cert_file, key_file = make_ca(cert_dir)
        self.ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ssl.load_cert_chain(cert_file, key_file)
        if alpn is not None:
            self.ssl.set_alpn_protocols(list(alpn))
        self.max_streams = max_streams
        self.on_request = on_request
        self.speak = speak
        """False: accept TLS and then say nothing (no SETTINGS)."""
        self.connections: list[ServerConnection] = []
        self.requests: list[Request] = []
        self.errors: list[Exception] = []
        self.base_url = ""
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> H2Server:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: ServerConnection(self), HOST, 0, ssl=self.ssl)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"https://{HOST}:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.abort()
        await self._server.wait_closed()

    def pool(self, *, connections: int = 1, max_streams: int = 1000, timeout: float = 10.0) -> Http2Pool:
        """A client pool for this server, trusting its CA."""
        return Http2Pool(
            self.base_url,
            ssl.create_default_context(cafile=self.ca_file),
            connections=connections,
            max_streams=max_streams,
            timeout=timeout,
        )

    def changed(self) -> None:
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        """Wait until ``predicate()`` holds (checked whenever the server's state changes)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def open_streams(self) -> int:
        return sum(len(c.open) for c in self.connections)


def holding_first_connection(held: list[Request]) -> Callable[[Request], None]:
    """A handler that keeps the requests of the server's first connection unanswered (in ``held``)
    and answers the others."""

    def on_request(request: Request) -> None:
        if request.connection is request.connection.server.connections[0]:
            held.append(request)
        else:
            answer_soon(request)

    return on_request


def request_to(server: H2Server, path: str, body: bytes = b"") -> VendorRequest:
    """GET ``path`` on the server, or POST when there is a body."""
    return VendorRequest("POST" if body else "GET", f"{server.base_url}{path}", {"x-test": path}, body)


async def within(task: asyncio.Task[VendorResponse]) -> VendorResponse:
    return await asyncio.wait_for(task, WAIT)


async def fails(task: asyncio.Task[VendorResponse]) -> Http2Error:
    """The ``Http2Error`` the request raised (within ``WAIT``)."""
    with pytest.raises(Http2Error) as caught:
        await asyncio.wait_for(task, WAIT)
    return caught.value


def send(pool: Http2Pool, request: VendorRequest) -> asyncio.Task[VendorResponse]:
    return asyncio.create_task(pool.request(request))


STATUSES = (200, 201, 202, 400, 410)


async def test_many_concurrent_requests_share_one_connection_and_get_their_own_answers(
    tmp_path: Path,
) -> None:
    n = 300

    def answer_when_all_are_in(request: Request) -> None:
        # Hold every answer until all n requests are open at once, then answer in reverse order:
        # each response must still reach the request it belongs to.
        if len(server.requests) < n:
            return
        for held in reversed(server.requests):
            i = int(held.path.rsplit("/", 1)[1])
            held.respond(
                STATUSES[i % len(STATUSES)],
                f"answer {i} to ".encode() + bytes(held.body),
                [("x-n", str(i)), ("X-Mixed-Case", "v")],
            )

    async with H2Server(tmp_path, on_request=answer_when_all_are_in) as server:
        pool = server.pool(connections=4)
        try:
            tasks = [send(pool, request_to(server, f"/r/{i}", f"body {i}".encode())) for i in range(n)]
            responses = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
            for i, response in enumerate(responses):
                assert response.status == STATUSES[i % len(STATUSES)]
                assert response.body == f"answer {i} to body {i}".encode()
                assert response.headers["x-n"] == str(i)
                assert response.headers["x-mixed-case"] == "v"
                assert response.headers["content-length"] == str(len(response.body))
            assert pool.opened == 1
            assert len(server.connections) == 1
            assert server.connections[0].max_open == n
            first = server.requests[0]
            assert first.headers[":authority"] == pool.authority
            assert first.headers[":scheme"] == "https"
            assert first.headers[":method"] == "POST"
            assert first.headers["x-test"] == first.path
            assert server.errors == []
        finally:
            await pool.aclose()
        await asyncio.wait_for(server.connections[0].closed.wait(), WAIT)


async def test_a_request_body_larger_than_the_flow_control_window_arrives_whole(tmp_path: Path) -> None:
    body = bytes(range(256)) * 1024  # 256 KiB: four times HTTP/2's initial window

    def digest(request: Request) -> None:
        request.respond(200, hashlib.sha256(request.body).hexdigest().encode())

    async with H2Server(tmp_path, on_request=digest) as server:
        pool = server.pool()
        try:
            response = await within(send(pool, request_to(server, "/big", body)))
            assert response.status == 200
            assert response.body == hashlib.sha256(body).hexdigest().encode()
            # The default GET, no body: END_STREAM on the HEADERS frame.
            response = await within(send(pool, request_to(server, "/small")))
            assert response.body == hashlib.sha256(b"").hexdigest().encode()
            assert server.requests[1].headers[":method"] == "GET"
        finally:
            await pool.aclose()


@pytest.mark.parametrize(("server_limit", "our_limit"), [(5, 1000), (1000, 3)])
async def test_the_stream_limit_is_honoured_and_every_request_completes(
    tmp_path: Path, server_limit: int, our_limit: int
) -> None:
    limit = min(server_limit, our_limit)
    async with H2Server(tmp_path, max_streams=server_limit) as server:
        pool = server.pool(max_streams=our_limit)
        try:
            tasks = [send(pool, request_to(server, f"/r/{i}")) for i in range(300)]
            responses = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
            assert [r.body for r in responses] == [f"/r/{i} ".encode() for i in range(300)]
            assert len(server.connections) == 1
            # Answers come a loop turn late, so the client does keep `limit` streams open.
            assert server.connections[0].max_open == limit
            assert server.errors == []  # h2 on the server would refuse a stream above its limit
        finally:
            await pool.aclose()


async def test_a_second_connection_opens_only_when_the_first_is_full(tmp_path: Path) -> None:
    held: list[Request] = []
    async with H2Server(tmp_path, max_streams=5, on_request=held.append) as server:
        pool = server.pool(connections=2)
        try:
            first = [send(pool, request_to(server, f"/a/{i}")) for i in range(5)]
            await server.until(lambda: len(held) == 5)
            assert pool.opened == 1
            assert len(server.connections) == 1

            sixth = send(pool, request_to(server, "/b/0"))
            await server.until(lambda: len(held) == 6)
            assert pool.opened == 2
            assert len(server.connections) == 2
            assert held[5].connection is server.connections[1]

            # Both connections full: more requests wait for a free stream, no third connection.
            waiting = [send(pool, request_to(server, f"/c/{i}")) for i in range(6)]
            await server.until(lambda: len(held) == 10)
            assert all(c.max_open <= 5 for c in server.connections)
            assert server.open_streams() == 10
            assert not any(t.done() for t in waiting[4:])
            held[0].respond(200, b"/a/0 ")  # one slot frees up on the first connection
            await server.until(lambda: len(held) == 11)
            assert held[10].connection is server.connections[0]

            server.on_request = answer_soon
            for request in held[1:]:
                request.respond(200, f"{request.path} ".encode())
            responses = await asyncio.wait_for(asyncio.gather(*first, sixth, *waiting), WAIT)
            paths = [*(f"/a/{i}" for i in range(5)), "/b/0", *(f"/c/{i}" for i in range(6))]
            assert [r.body for r in responses] == [f"{path} ".encode() for path in paths]
            assert pool.opened == 2
            assert len(server.connections) == 2
            assert all(c.max_open <= 5 for c in server.connections)
        finally:
            await pool.aclose()


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_a_lost_connection_fails_its_requests_and_the_next_request_reconnects(
    tmp_path: Path, how: str
) -> None:
    held: list[Request] = []
    hold_first_connection = holding_first_connection(held)

    async with H2Server(tmp_path, on_request=hold_first_connection) as server:
        pool = server.pool(timeout=WAIT * 10)  # a failure must come from the loss, not a timeout
        try:
            tasks = [send(pool, request_to(server, f"/r/{i}")) for i in range(3)]
            await server.until(lambda: len(held) == 3)
            connection = server.connections[0]
            assert connection.transport is not None
            if how == "close":
                connection.transport.close()
            else:
                connection.transport.abort()
            for task in tasks:
                assert "connection" in str(await fails(task))

            response = await within(send(pool, request_to(server, "/after")))
            assert response.body == b"/after "
            assert pool.opened == 2
            assert len(server.connections) == 2
        finally:
            await pool.aclose()


async def test_goaway_fails_the_streams_above_its_last_stream_id_and_lets_the_others_finish(
    tmp_path: Path,
) -> None:
    held: list[Request] = []
    hold_first_connection = holding_first_connection(held)

    async with H2Server(tmp_path, on_request=hold_first_connection) as server:
        pool = server.pool(timeout=WAIT * 10)
        try:
            tasks = {i: send(pool, request_to(server, f"/r/{i}")) for i in range(4)}
            await server.until(lambda: len(held) == 4)
            by_path = {request.path: request for request in held}
            stream_of = {i: by_path[f"/r/{i}"].stream_id for i in tasks}
            last = sorted(stream_of.values())[1]  # two streams below, two above
            connection = server.connections[0]
            connection.goaway(last)

            above = [i for i in tasks if stream_of[i] > last]
            below = [i for i in tasks if stream_of[i] <= last]
            for i in above:
                assert "GOAWAY" in str(await fails(tasks[i]))
            # The connection is not used for new requests any more: a new one opens.
            response = await within(send(pool, request_to(server, "/after")))
            assert response.body == b"/after "
            assert pool.opened == 2
            assert len(server.connections) == 2

            # Streams the server accepted before its GOAWAY may still be answered.
            for i in below:
                by_path[f"/r/{i}"].respond(200, f"late {i}".encode())
            for i in below:
                assert (await within(tasks[i])).body == f"late {i}".encode()
            # Once they are done, the client closes the connection the server asked it to leave.
            await asyncio.wait_for(connection.closed.wait(), WAIT)
            assert server.errors == []
        finally:
            await pool.aclose()


async def test_a_reset_stream_fails_only_its_request(tmp_path: Path) -> None:
    def reset_one(request: Request) -> None:
        if request.path == "/reset":
            request.reset(h2.errors.ErrorCodes.REFUSED_STREAM)
        else:
            answer_soon(request)

    async with H2Server(tmp_path, on_request=reset_one) as server:
        pool = server.pool()
        try:
            before = send(pool, request_to(server, "/before"))
            reset = send(pool, request_to(server, "/reset"))
            after = send(pool, request_to(server, "/after"))
            error = await fails(reset)
            assert "reset" in str(error)
            assert str(int(h2.errors.ErrorCodes.REFUSED_STREAM)) in str(error)
            assert (await within(before)).body == b"/before "
            assert (await within(after)).body == b"/after "
            # The connection carries on.
            assert (await within(send(pool, request_to(server, "/next")))).body == b"/next "
            assert pool.opened == 1
            assert len(server.connections) == 1
        finally:
            await pool.aclose()


async def test_an_unanswered_request_times_out_and_is_cancelled(tmp_path: Path) -> None:
    timeout = 0.3

    def never_answer_one(request: Request) -> None:
        if request.path != "/never":
            answer_soon(request)

    async with H2Server(tmp_path, on_request=never_answer_one) as server:
        pool = server.pool(timeout=timeout)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            never = send(pool, request_to(server, "/never"))
            assert (await within(send(pool, request_to(server, "/meanwhile")))).body == b"/meanwhile "
            error = await fails(never)
            assert loop.time() - started >= timeout * 0.9
            assert "no answer" in str(error)
            # The client resets the stream, so the server may forget it; the connection stays.
            connection = server.connections[0]
            await server.until(lambda: bool(connection.client_resets))
            assert list(connection.client_resets.values()) == [h2.errors.ErrorCodes.CANCEL]
            assert (await within(send(pool, request_to(server, "/next")))).body == b"/next "
            assert pool.opened == 1
        finally:
            await pool.aclose()


async def test_a_server_that_never_sends_its_settings_times_out_and_is_hung_up_on(
    tmp_path: Path,
) -> None:
    async with H2Server(tmp_path, speak=False) as server:
        pool = server.pool(timeout=0.3)
        try:
            assert "cannot connect" in str(await fails(send(pool, request_to(server, "/"))))
            await asyncio.wait_for(server.connections[0].closed.wait(), WAIT)
        finally:
            await pool.aclose()


@pytest.mark.parametrize("alpn", [("http/1.1",), None], ids=["http1.1", "no-alpn"])
async def test_a_server_without_http2_is_a_clear_error_not_a_hang(
    tmp_path: Path, alpn: tuple[str, ...] | None
) -> None:
    async with H2Server(tmp_path, alpn=alpn, speak=False) as server:
        pool = server.pool(timeout=WAIT * 10)  # the error must not wait for a timeout
        try:
            error = await fails(send(pool, request_to(server, "/")))
            assert "does not offer HTTP/2" in str(error)
            await asyncio.wait_for(server.connections[0].closed.wait(), WAIT)
        finally:
            await pool.aclose()


async def test_a_refused_connection_is_an_http2_error(tmp_path: Path) -> None:
    async with H2Server(tmp_path) as server:
        pass  # closed: nothing listens on its port now
    pool = server.pool()
    try:
        assert "cannot connect" in str(await fails(send(pool, request_to(server, "/"))))
    finally:
        await pool.aclose()
