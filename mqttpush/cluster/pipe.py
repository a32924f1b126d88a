"""``mqttpush serve`` on two cores: its broker in a child process, linked by a socket pair.

The parent (HTTP API, bridge, store) and the child (the MQTT broker and its listeners) each run
an event loop under their own GIL. They speak frames on one ``socketpair``: a head ``!BI`` (kind,
body length), then the body. Frames written in one loop turn leave in one ``write``.

| kind        | direction      | body                                                             |
|-------------|----------------|------------------------------------------------------------------|
| ``CONFIG``  | parent → child | the server's configuration, JSON (the first frame)               |
| ``READY``   | child → parent | bound listener ports, JSON (``{"port": …, "ws_port": …}``)       |
| ``FAILED``  | child → parent | why the broker could not start, UTF-8; the child exits           |
| ``PUBLISH`` | parent → child | ``!dBB`` expires_at (inf: never), qos, retain; ``!H`` topic length, topic, payload |
| ``DONE``    | child → parent | ``!Q`` how many ``PUBLISH`` frames the child has handled so far  |
| ``CLEAR``   | parent → child | a topic whose retained message goes (no answer: frames are handled in order) |
| ``UP``      | child → parent | ``!H`` topic length, topic, payload: a client publish (receipt, MQTT API push) |
| ``PRESENCE``| child → parent | ``!B`` online, device id                                         |
| ``AUTH``    | child → parent | ``!I`` request id, JSON ``[client_id, username, password]``      |
| ``AUTHED``  | parent → child | ``!I`` request id, JSON identity (:func:`encode_identity`) or ``null`` |
| ``STATUS``  | child → parent | JSON: broker counters and listeners not listening, every second   |
| ``STOP``    | parent → child | stop listening, close every connection, exit                      |

The child owns no store: it asks the parent to authenticate each CONNECT and tells it of
presence and client publishes. ``PUBLISH`` frames are numbered by their order, so one ``DONE``
count answers every publish up to it. A child that dies loses its sessions and retained inbox,
as a restarted ``serve`` would: the parent starts another and re-publishes from the store.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import struct
from collections.abc import Awaitable, Callable
from typing import Any, cast

from mqttpush.errors import StartupError
from mqttpush.topics import AppIdentity, DeviceIdentity, Identity, ServiceIdentity

log = logging.getLogger("mqttpush.pipe")

CONFIG, READY, FAILED, PUBLISH, DONE, CLEAR, UP, PRESENCE, AUTH, AUTHED, STATUS, STOP = range(1, 13)
_HEAD = struct.Struct("!BI")
_PUBLISH = struct.Struct("!dBBH")
_TOPIC = struct.Struct("!H")
_COUNT = struct.Struct("!Q")
_REQUEST = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024
"""A longer frame means the two ends disagree on the protocol: the link is closed."""


def frame(kind: int, body: bytes = b"") -> bytes:
    return _HEAD.pack(kind, len(body)) + body


def encode_publish(topic: str, payload: bytes, qos: int, retain: bool, expires_at: float | None) -> bytes:
    raw = topic.encode()
    head = _PUBLISH.pack(math.inf if expires_at is None else expires_at, qos, retain, len(raw))
    return frame(PUBLISH, head + raw + payload)


def decode_publish(body: bytes) -> tuple[str, bytes, int, bool, float]:
    """``(topic, payload, qos, retain, expires_at)``."""
    expires_at, qos, retain, n = _PUBLISH.unpack_from(body)
    start = _PUBLISH.size
    return body[start : start + n].decode(), body[start + n :], qos, bool(retain), expires_at


def encode_up(topic: str, payload: bytes) -> bytes:
    raw = topic.encode()
    return frame(UP, _TOPIC.pack(len(raw)) + raw + payload)


def decode_up(body: bytes) -> tuple[str, bytes]:
    (n,) = _TOPIC.unpack_from(body)
    return body[2 : 2 + n].decode(), body[2 + n :]


def encode_identity(who: Identity | None) -> Any:
    """JSON-able form of an MQTT login's identity (None: refused)."""
    if isinstance(who, DeviceIdentity):
        return ["device", who.app, who.device]
    if isinstance(who, AppIdentity):
        return ["app", who.app]
    if isinstance(who, ServiceIdentity):
        return ["service", who.username]
    return None


def decode_identity(doc: Any) -> Identity | None:
    match doc:
        case ["device", str(app), str(device)]:
            return DeviceIdentity(app, device)
        case ["app", str(app)]:
            return AppIdentity(app)
        case ["service", str(username)]:
            return ServiceIdentity(username)
    return None


class _Framed(asyncio.Protocol):
    """Frames in and out of one stream: out, corked until the end of the loop turn; in, each
    frame handed to :meth:`frame_received` in order."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._buf = bytearray()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Done when the current connection is lost."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._out, self._buf = [], bytearray()
        if self.closed.done():  # the same end on a new connection (a new broker process)
            self.closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self.closed.done():
            self.closed.set_result(None)

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def send(self, data: bytes) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(out))

    def close(self) -> None:
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        at, size, end = 0, _HEAD.size, len(buf)
        while end - at >= size:
            kind, n = _HEAD.unpack_from(buf, at)
            if n > MAX_FRAME:
                log.error("broker process link: a frame of %d bytes; closing", n)
                self.close()
                return
            if end - at - size < n:
                break
            body = bytes(buf[at + size : at + size + n])
            at += size + n
            try:
                self.frame_received(kind, body)
            except Exception:
                log.exception("broker process link: frame of kind %d", kind)
        del buf[:at]

    def frame_received(self, kind: int, body: bytes) -> None:
        raise NotImplementedError


Authenticate = Callable[[str, str | None, str | None], Awaitable[Identity | None]]


class BridgeEnd(_Framed):
    """The parent's end: a ``bridge.publisher.Publisher`` into the child's broker, and the
    handlers of what the child sends up (client publishes, presence, logins to check).

    One end serves the broker processes one after another (``loop.connect_accepted_socket(lambda:
    end, sock)`` for each): publishes a process that died left unhandled go to the next one once
    it is ``READY``, in order; publishes made meanwhile wait for it."""

    def __init__(
        self,
        on_up: Callable[[str, bytes], None],
        on_presence: Callable[[str, bool], None],
        authenticate: Authenticate,
        on_status: Callable[[dict[str, Any]], None],
    ) -> None:
        super().__init__()
        self._on_up = on_up
        self._on_presence = on_presence
        self._authenticate = authenticate
        self._on_status = on_status
        self._unanswered: collections.deque[tuple[bytes, asyncio.Future[None] | None]] = collections.deque()
        self._done = 0
        """``DONE`` count of the current process already applied to ``_unanswered``."""
        self.ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        """The current process's ``READY`` ports (or its ``FAILED`` reason as a StartupError)."""
        self._auths: set[asyncio.Task[None]] = set()
        self._listening = False
        """The current process said ``READY``: it takes publishes (before, it has no broker)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._done, self._listening = 0, False
        if self.ready.done():
            self.ready = asyncio.get_running_loop().create_future()

    window = 1024
    """Publishes the process may have unhandled before a publish waits for its ``DONE``: within
    it a publish is done once written (no round trip per message), beyond it the bridge waits for
    the broker process, so a slow one is seen as publish lag (``--max-publish-lag``)."""

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        expires_at: float | None = None,
    ) -> None:
        data = encode_publish(topic, payload, qos, retain, expires_at)
        if self._listening and len(self._unanswered) < self.window:
            # Done once written: a process that dies before handling it gets it again from its
            # successor (resent below), and the store re-publishes all that has not arrived.
            self._unanswered.append((data, None))
            self.send(data)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unanswered.append((data, fut))
        if self._listening:
            self.send(data)
        await fut

    async def clear_retained(self, topic: str) -> None:
        # Unanswered: the child handles frames in order, and a child that died took its retained
        # messages with it.
        if self._listening:
            self.send(frame(CLEAR, topic.encode()))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._listening = False
        if not self.ready.done():
            self.ready.set_exception(StartupError("the broker process exited before it was ready"))
        for task in list(self._auths):
            task.cancel()

    def frame_received(self, kind: int, body: bytes) -> None:
        if kind == UP:
            self._on_up(*decode_up(body))
        elif kind == DONE:
            (count,) = _COUNT.unpack(body)
            pending = self._unanswered
            while self._done < count and pending:
                _data, fut = pending.popleft()
                self._done += 1
                if fut is not None and not fut.done():
                    fut.set_result(None)
        elif kind == PRESENCE:
            self._on_presence(body[1:].decode(), body[0] == 1)
        elif kind == AUTH:
            task = asyncio.get_running_loop().create_task(self._answer_login(body))
            self._auths.add(task)
            task.add_done_callback(self._auths.discard)
        elif kind == STATUS:
            self._on_status(json.loads(body))
        elif kind == READY and not self.ready.done():
            self._listening = True
            for data, _fut in self._unanswered:  # what the process before left, and what waited
                self.send(data)
            self.ready.set_result(json.loads(body))
        elif kind == FAILED and not self.ready.done():
            self.ready.set_exception(StartupError(body.decode(errors="replace")))

    async def _answer_login(self, body: bytes) -> None:
        (request,) = _REQUEST.unpack_from(body)
        client_id, username, password = json.loads(body[_REQUEST.size :])
        try:
            who = await self._authenticate(client_id, username, password)
        except Exception as exc:  # the store is down: refused, as the in-process broker would
            log.warning("login not checked (the store is unavailable): %r", exc)
            who = None
        self.send(frame(AUTHED, _REQUEST.pack(request) + json.dumps(encode_identity(who)).encode()))


class BrokerEnd(_Framed):
    """The child's end: applies the parent's publishes to ``broker`` and sends up what the broker's
    clients do. ``publish(topic, payload, qos, retain, expires_at)`` and ``clear(topic)`` are the
    broker's immediate (synchronous) calls."""

    def __init__(self) -> None:
        super().__init__()
        self.config: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        """The ``CONFIG`` frame's body: the parent's ``mqttpush.config.config_to_json``."""
        self.stop: asyncio.Event = asyncio.Event()
        self.publish: Callable[[str, bytes, int, bool, float], None] | None = None
        self.clear: Callable[[str], None] | None = None
        self._handled = 0
        self._done_due = False
        self._logins: dict[int, asyncio.Future[Identity | None]] = {}
        self._next_login = 0

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.stop.set()  # the parent is gone (even kill -9): nobody to work for
        if not self.config.done():
            self.config.cancel()
        for fut in self._logins.values():
            if not fut.done():
                fut.set_result(None)

    def frame_received(self, kind: int, body: bytes) -> None:
        if kind == PUBLISH:
            assert self.publish is not None
            self.publish(*decode_publish(body))
            self._handled += 1
            if not self._done_due:
                self._done_due = True
                asyncio.get_running_loop().call_soon(self._send_done)
        elif kind == CLEAR:
            assert self.clear is not None
            self.clear(body.decode())
        elif kind == AUTHED:
            (request,) = _REQUEST.unpack_from(body)
            fut = self._logins.pop(request, None)
            if fut is not None and not fut.done():
                fut.set_result(decode_identity(json.loads(body[_REQUEST.size :])))
        elif kind == CONFIG and not self.config.done():
            self.config.set_result(body)
        elif kind == STOP:
            self.stop.set()

    def _send_done(self) -> None:
        self._done_due = False
        self.send(frame(DONE, _COUNT.pack(self._handled)))

    async def authenticate(
        self, client_id: str, username: str | None, password: str | None
    ) -> Identity | None:
        """The broker's authenticator: the parent checks the login against the store."""
        if not self.is_open:
            return None
        self._next_login += 1
        request = self._next_login
        fut: asyncio.Future[Identity | None] = asyncio.get_running_loop().create_future()
        self._logins[request] = fut
        self.send(frame(AUTH, _REQUEST.pack(request) + json.dumps([client_id, username, password]).encode()))
        return await fut

    def presence(self, device: DeviceIdentity, online: bool) -> None:
        self.send(frame(PRESENCE, bytes([online]) + device.device.encode()))

    def up(self, topic: str, payload: bytes, _who: Identity) -> None:
        self.send(encode_up(topic, payload))

    def ready(self, ports: dict[str, int]) -> None:
        self.send(frame(READY, json.dumps(ports).encode()))

    def failed(self, reason: str) -> None:
        self.send(frame(FAILED, reason.encode()))

    def report(self, status: dict[str, Any]) -> None:
        self.send(frame(STATUS, json.dumps(status).encode()))
