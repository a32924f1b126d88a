"""``PushBroker``: an amqtt 0.12.1 ``Broker`` subclass that behaves as a push broker must.

What we replace, and why (docs/protocol.md, "What our broker layer fixes"):

* **Authentication before any session change.** amqtt deletes or rewrites the session of a
  client id *before* it checks the password, so a CONNECT with a victim's id and a wrong
  token wiped the victim's subscriptions. We authenticate right after reading CONNECT and
  refuse with CONNACK 5 without touching any session.
* **No retained replay on CONNECT** (amqtt replayed the retained messages of *every* filter in
  the broker to every client, and awaited while iterating the subscriptions dict, which raised
  ``RuntimeError: dictionary changed size during iteration`` under concurrent connects).
  Retained messages go out for a new SUBSCRIBE (MQTT-3.3.1-6); a resumed session gets what was
  queued for it while offline, once.
* **ACL** (docs/protocol.md, Topics) on SUBSCRIBE, PUBLISH, live delivery and retained delivery alike.
* **Queued messages of a persistent session** go out with retain=0 (MQTT-3.3.1-9), not 1.
* **Keepalive** enforced: a client silent for 1.5 × its keepalive is disconnected and its
  Will published (amqtt's read-timeout handler was a no-op).
* **Takeover** by the same client id closes the old connection without letting it mark the
  new one offline.
* A CONNECT must arrive within ``connect_timeout`` seconds of the socket opening, and only an
  MQTT 3.1.1 one goes on: MQTT 5 and 3.1 clients get CONNACK 0x01 at once (amqtt parsed an MQTT 5
  CONNECT as 3.1.1 and left the client waiting for the timeout).
* **Limits** (``limits.py``, docs/security.md): a global and a per-address cap on connections and
  a per-address back-off after failed logins close a socket before its CONNECT is read; refused
  connections are logged as one summary line per interval, not one line each (amqtt logged every
  connection and every failure: 32 MB in 20 s of a password flood).
* **Expiry**: a retained message published with ``expires_at`` is never sent after that time
  (not replayed on SUBSCRIBE, not sent from an offline queue) and is pruned from the index.
* **The message path** after CONNACK is ours (``connection.py``, ``wire.py``): packets parsed
  from one buffer and handled inline, PUBLISH encoded to bytes once per subscriber, QoS 1/2
  flows in the session's ``Outbox`` (unacknowledged messages kept across reconnects and re-sent
  with DUP, an in-flight window, a bounded offline queue). amqtt keeps the listener, the CONNECT
  parsing and the session objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import amqtt.broker as amqtt_broker_module
import amqtt.mqtt.protocol.broker_handler as amqtt_broker_handler_module
from amqtt.adapters import ReaderAdapter, StreamWriterAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import ListenerType
from amqtt.errors import AMQTTError, BrokerError, MQTTError, NoDataError
from amqtt.mqtt.connack import NOT_AUTHORIZED
from amqtt.session import Session
from transitions import MachineError

from mqttpush.broker import wire
from mqttpush.broker.connection import Connection, Outbox
from mqttpush.broker.counters import BrokerCounters
from mqttpush.broker.index import RetainedIndex, SubscriptionIndex
from mqttpush.broker.limits import BrokerLimits, ConnectionCaps, LoginThrottle, RefusalSummary
from mqttpush.broker.websocket import WebSocketProtocol, WsTransport
from mqttpush.clock import Clock, SystemClock
from mqttpush.errors import StartupError
from mqttpush.topics import (
    DeviceIdentity,
    Identity,
    may_publish,
    may_receive,
    may_subscribe,
    receive_implied_by_subscribe,
    topic_class,
    topic_matches,
    valid_filter,
)

log = logging.getLogger("mqttpush.broker")

Authenticator = Callable[[str, str | None, str | None], Awaitable[Identity | None]]
"""``(client_id, username, password) -> Identity`` or None to refuse with CONNACK 5."""

PresenceHook = Callable[[DeviceIdentity, bool], None]
"""Called with ``(device, online)`` when a device's connection starts or ends."""

Tap = Callable[[str, bytes, Identity], None]
"""Called for each client PUBLISH matching a tapped filter: ``(topic, payload, publisher)``."""

SubscribeHook = Callable[[DeviceIdentity, list[str]], None]
"""Called after a device's SUBACK (and its retained replay) with the filters just granted."""

KEEPALIVE_GRACE = 1.5  # MQTT-3.1.2-24
UNSUBACK = 0xB0


class _SessionState:
    """A session's new → connected → disconnected states, as a plain attribute.

    amqtt builds a ``transitions.Machine`` for every session: ~15 KiB and ~1.2 ms of CPU each,
    most of what a CONNECT cost and most of a connection's memory. Same interface, same rules
    (connect from connected is an error).
    """

    __slots__ = ("_session", "state")

    def __init__(self, session: Session) -> None:
        self._session = session
        self.state = "new"

    def connect(self) -> None:
        if self.state == "connected":
            raise MachineError("session is already connected")
        self.state = "connected"
        self._session._on_enter_connected()

    def disconnect(self) -> None:
        self.state = "disconnected"
        self._session._on_enter_disconnected()

    def is_connected(self) -> bool:
        return self.state == "connected"

    def is_disconnected(self) -> bool:
        return self.state == "disconnected"

    def is_new(self) -> bool:
        return self.state == "new"


class _LeanSession(Session):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        # amqtt's two asyncio queues per session are replaced by the outbox (see connection.py);
        # they are made only if amqtt's own code asks for them (a plain amqtt broker in the process).
        self._queues: list[Any] = [None, None]
        self.outbox = Outbox()  # window and limit set by PushBroker at CONNECT
        self.link: Connection | None = None  # the connection that has CONNACK'd, while it lasts

    def _queue(self, index: int) -> Any:
        if self._queues[index] is None:
            self._queues[index] = asyncio.Queue()
        return self._queues[index]

    def _set_queue(self, index: int, queue: Any) -> None:
        if "_queues" in self.__dict__:  # amqtt's __init__ assigns them before ours runs
            self._queues[index] = queue

    retained_messages = property(lambda self: self._queue(0), lambda self, q: self._set_queue(0, q))
    delivered_message_queue = property(lambda self: self._queue(1), lambda self, q: self._set_queue(1, q))

    def _init_states(self) -> None:
        self.transitions = _SessionState(self)

    def clear_queues(self) -> None:
        self.outbox.clear()
        if self._queues != [None, None]:
            super().clear_queues()


# amqtt creates sessions by the module-level name in these two places; ours are lean.
amqtt_broker_module.Session = _LeanSession
amqtt_broker_handler_module.Session = _LeanSession


class PacketTooLarge(Exception):
    """A client announced a packet over the broker's limit; its connection is closed unread."""


class _ConnectReader(ReaderAdapter):  # type: ignore[misc]
    """The first packet, read whole by us and checked before amqtt parses it from memory.

    amqtt trusts the packet's length (it would buffer any body a client announces) and parses
    CONNECT as MQTT 3.1.1 whatever its protocol level. ``read_connect()`` refuses an oversized or
    non-CONNECT first packet and returns its body; the socket's stream (``stream``) is left right
    behind it, for ``Connection`` to read in chunks once the client is connected.
    """

    def __init__(self, stream: asyncio.StreamReader, limit: int) -> None:
        self.stream = stream
        self._limit = limit
        self._packet = b""
        self._at = 0

    async def read_connect(self) -> bytes:
        try:
            head = await self.stream.readexactly(2)
            length, shift, digit = 0, 0, head[1]
            while True:
                length |= (digit & 0x7F) << shift
                if not digit & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise wire.Malformed("remaining length longer than 4 bytes")
                digit = (await self.stream.readexactly(1))[0]
                head += bytes((digit,))
            if head[0] != wire.CONNECT:
                raise wire.Malformed(f"first packet {head[0]:#x} is not CONNECT (MQTT-3.1.0-1)")
            if length > self._limit:
                raise PacketTooLarge(f"packet body of {length} bytes, the limit is {self._limit}")
            body = await self.stream.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise NoDataError(f"connection ended before CONNECT: {exc!r}") from None
        self._packet, self._at = head + body, 0
        return body

    async def read(self, n: int = -1) -> bytes:
        start = self._at
        end = len(self._packet) if n < 0 else start + n
        if end > len(self._packet):
            raise wire.Malformed("CONNECT shorter than its fields")
        self._at = end
        return self._packet[start:end]

    def parsed(self) -> None:
        """amqtt is done with the packet: do not keep it for the connection's lifetime."""
        self._packet, self._at = b"", 0

    def feed_eof(self) -> None:
        self.stream.feed_eof()


class PushBroker(Broker):  # type: ignore[misc]
    """The embedded broker. Start with ``await broker.start()``; ``broker.port`` is the bound port."""

    max_inflight = 100

    def __init__(
        self,
        *,
        host: str,
        port: int,
        authenticator: Authenticator,
        on_presence: PresenceHook | None = None,
        connect_timeout: float = 10.0,
        max_packet: int = 256 * 1024,
        offline_queue: int = 1000,
        backlog: int = 4096,
        ws_port: int | None = None,
        tls: tuple[str, str] | None = None,
        mqtts_port: int | None = None,
        wss_port: int | None = None,
        clock: Clock | None = None,
        expiry_sweep: float = 60.0,
        limits: BrokerLimits | None = None,
    ) -> None:
        """``tls`` = (certificate chain file, key file) for the ``mqtts_port`` and ``wss_port``
        listeners; ``ws_port`` is plain MQTT over WebSocket. Each listener is off when None.
        ``clock`` tells when a message's ``expires_at`` has passed; expired retained messages are
        also swept from memory every ``expiry_sweep`` seconds of it. ``limits``: connection caps
        and the failed-login back-off (docs/security.md)."""
        listeners: dict[str, dict[str, Any]] = {"default": {"type": "tcp", "bind": f"{host}:{port}"}}
        if ws_port is not None:
            listeners["ws"] = {"type": "ws", "bind": f"{host}:{ws_port}"}
        for name, kind, tls_port in (("mqtts", "tcp", mqtts_port), ("wss", "ws", wss_port)):
            if tls_port is not None:
                if tls is None:
                    raise StartupError(f"the {name} listener needs a TLS certificate and key")
                listeners[name] = {
                    "type": kind,
                    "bind": f"{host}:{tls_port}",
                    "ssl": True,
                    "certfile": tls[0],
                    "keyfile": tls[1],
                }
        config = {"listeners": listeners, "plugins": {}}
        super().__init__(config)
        self._authenticator = authenticator
        self._on_presence = on_presence
        self._connect_timeout = connect_timeout
        self.max_packet = max_packet
        self._offline_queue = offline_queue
        self._backlog = backlog
        self._identities: dict[str, Identity] = {}
        self._current_handler: dict[str, Connection] = {}
        # Who gets a PUBLISH: exact filters in a dict, wildcards in a trie (amqtt walked every filter).
        self._subs: SubscriptionIndex[str] = SubscriptionIndex()
        self._clock: Clock = clock or SystemClock()
        self._expiry_sweep = expiry_sweep
        self._sweeper: asyncio.Task[None] | None = None
        # Retained messages by topic, found by filter in O(matches) (amqtt scanned them all):
        # topic → (payload, qos, expires_at), math.inf for a message that does not expire.
        self._retained: RetainedIndex[tuple[bytes, int, float]] = RetainedIndex()
        # (expires_at, topic) of retained messages that expire, soonest first; an entry whose topic
        # was replaced or cleared since is stale and skipped when it comes up.
        self._expiring: list[tuple[float, str]] = []
        self._taps: list[Tap] = []
        self.on_subscribe: SubscribeHook | None = None
        """A cluster node's hook (mqttpush.cluster): it sends the device its inbox from the store."""
        self._tap_index: SubscriptionIndex[int] = SubscriptionIndex()  # filter → positions in _taps
        self._dirty: list[Connection] = []  # written to this loop turn, flushed at its end
        self._ws_tasks: set[asyncio.Task[None]] = set()  # WebSocket clients (TCP ones are asyncio's)
        self._stopping = False
        limits = limits or BrokerLimits()
        self._caps = ConnectionCaps(limits.max_connections, limits.max_connections_per_ip)
        self._throttle = LoginThrottle(
            limits.login_failures, limits.login_window, limits.login_backoff, limits.login_backoff_max
        )
        self._refusals = RefusalSummary()
        self._refusal_log_interval = limits.refusal_log_interval
        self._refusal_log: asyncio.TimerHandle | None = None
        self.counters = BrokerCounters()  # read by GET /metrics (mqttpush.api.metrics)

    # --- public surface (used in-process by the bridge's publisher) ---------------------------

    @property
    def port(self) -> int:
        return self.listener_port("default") or 0

    def listener_port(self, name: str) -> int | None:
        """The bound port of listener ``default``, ``ws``, ``mqtts`` or ``wss``; None if it is off."""
        server = self._servers.get(name)
        if server is None:
            return None
        return int(server.instance.sockets[0].getsockname()[1])

    def not_listening(self) -> list[str]:
        """Listeners (``default``, ``ws``, ``mqtts``, ``wss``) configured but not accepting connections."""
        return [name for name, server in self._servers.items() if not server.instance.is_serving()]

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        *,
        expires_at: float | None = None,
    ) -> None:
        """Publish as the broker itself (no socket): retained first, then to current subscribers.

        ``expires_at`` (unix seconds, the broker's clock): after it the message is sent to nobody,
        neither replayed from the retained store nor sent from an offline session's queue; one
        already expired is not published at all (and clears the topic's retained message).
        Done when it returns: the PUBLISH bytes are in each online subscriber's socket buffer (or
        its session's queue), so this is a coroutine only for the ``Publisher`` interface.
        """
        self.publish_now(topic, payload, qos, retain, math.inf if expires_at is None else expires_at)

    def publish_now(self, topic: str, payload: bytes, qos: int, retain: bool, expires_at: float) -> None:
        """:meth:`publish` as a plain call (``expires_at``: ``math.inf`` for never), for a caller
        handling a stream of them in order (``serve``'s broker process, mqttpush.cluster.pipe)."""
        self._route(topic, payload, qos, retain, expires_at)

    async def clear_retained(self, topic: str) -> None:
        """Drop the retained message of ``topic`` without sending anything to subscribers."""
        self.discard_retained(topic)

    def discard_retained(self, topic: str) -> None:
        """:meth:`clear_retained` as a plain call."""
        self._retained.discard(topic)

    def tap(self, topic_filter: str, callback: Tap) -> None:
        """Have ``callback`` see every client PUBLISH on ``topic_filter`` that the ACL let through."""
        self._tap_index.add(topic_filter, len(self._taps), 0)
        self._taps.append(callback)

    def subscriptions_of(self, client_id: str) -> list[str]:
        """The filters ``client_id``'s session holds (a resumed session keeps them from before)."""
        return list(self._subs.filters_of(client_id))

    def deliver(
        self,
        client_id: str,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        expires_at: float | None = None,
    ) -> bool:
        """Queue a QoS 1 PUBLISH for one connected client, if one of its filters matches ``topic``
        and the ACL lets it receive it; False (nothing sent) otherwise. Nothing is retained."""
        entry = self._sessions.get(client_id)
        identity = self._identities.get(client_id)
        if entry is None or identity is None or not entry[0].transitions.is_connected():
            return False
        granted = [q for f, q in self._subs.filters_of(client_id).items() if topic_matches(topic, f)]
        if not granted or not may_receive(identity, topic):
            return False
        deadline = math.inf if expires_at is None else expires_at
        if deadline <= self._clock.now():
            return False
        session = entry[0]
        session.outbox.offer(session.link, topic.encode(), payload, min(1, max(granted)), retain, deadline)
        return True

    async def take_away(self, client_id: str) -> bool:
        """Close ``client_id``'s connection because it connected again elsewhere (another broker
        node): no Will, no presence change, and its session is dropped (it lives on the other
        node now). False if it has no connection here."""
        handler = self._current_handler.pop(client_id, None)
        entry = self._sessions.get(client_id)
        if handler is None or entry is None:
            return False
        session = entry[0]
        session.link = None
        log.info("session taken over elsewhere client_id=%s", client_id)
        await self._stop_handler(handler)
        session.transitions.disconnect()
        if client_id not in self._current_handler:  # nobody connected here meanwhile
            await self._delete_session(client_id)
            self._identities.pop(client_id, None)
        return True

    def retained_topics(self) -> list[str]:
        """Every topic holding an unexpired retained message."""
        self.prune_expired()
        return self._retained.topics()

    def retained_payload(self, topic: str) -> bytes | None:
        """The unexpired retained message of ``topic``, or None."""
        found = self._live_retained(topic)
        return found[0] if found is not None else None

    def prune_expired(self) -> int:
        """Drop every retained message whose ``expires_at`` has passed; returns how many."""
        now = self._clock.now()
        heap = self._expiring
        pruned = 0
        while heap and heap[0][0] <= now:
            expires_at, topic = heapq.heappop(heap)
            found = self._retained.get(topic)
            if found is not None and found[2] == expires_at:
                self._retained.discard(topic)
                pruned += 1
        if len(heap) > 2 * len(self._retained) + 1024:
            # Mostly stale (inbox topics cleared by receipts long before their TTL): rebuild.
            self._expiring = [
                (entry[2], topic)
                for topic in self._retained.topics()
                if (entry := self._retained.get(topic)) is not None and entry[2] != math.inf
            ]
            heapq.heapify(self._expiring)
        if pruned:
            log.debug("expired retained messages pruned=%d", pruned)
        return pruned

    def _live_retained(self, topic: str) -> tuple[bytes, int, float] | None:
        found = self._retained.get(topic)
        if found is not None and found[2] <= self._clock.now():
            self._retained.discard(topic)
            return None
        return found

    async def _sweep_expired(self) -> None:
        while True:
            await self._clock.sleep(self._expiry_sweep)
            self.prune_expired()

    async def start(self) -> None:
        # amqtt logs a traceback for a busy port; the caller gets one clear StartupError instead.
        amqtt_log = logging.getLogger("amqtt.broker")
        level = amqtt_log.level
        amqtt_log.setLevel(logging.CRITICAL)
        try:
            await super().start()
        except BrokerError as exc:
            raise StartupError(f"MQTT listener: {exc}") from None
        finally:
            amqtt_log.setLevel(level)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_expired())

    async def shutdown(self) -> None:
        self._stopping = True
        self._log_refusals()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await super().shutdown()

    # --- CONNECT -------------------------------------------------------------------------------

    async def _create_server_instance(
        self, listener_name: str, listener_type: Any, address: str | None, port: int, ssl_context: Any
    ) -> Any:
        if listener_type == ListenerType.WS:
            # Our own RFC 6455 server (websocket.py): the connection then runs the same message
            # path as a TCP one, which amqtt's websockets adapter could not.
            return await asyncio.get_running_loop().create_server(
                lambda: WebSocketProtocol(
                    functools.partial(self._ws_open, listener_name), self.max_packet + 16
                ),
                address,
                port,
                reuse_address=True,
                ssl=ssl_context,
                backlog=self._backlog,
            )
        if listener_type != ListenerType.TCP:
            raise StartupError(f"listener type {listener_type} is not supported")
        # amqtt left asyncio's backlog of 100: a reconnect storm overflowed it and clients waited out
        # TCP's SYN backoff (1 s, 3 s, 7 s...) while the broker sat idle. The kernel caps it (somaxconn).
        return await asyncio.start_server(
            functools.partial(self.stream_connected, listener_name=listener_name),
            address,
            port,
            reuse_address=True,
            ssl=ssl_context,
            backlog=self._backlog,
        )

    def _ws_open(self, listener_name: str, ws: WsTransport) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        ws.set_protocol(protocol)
        protocol.connection_made(ws)
        writer = asyncio.StreamWriter(ws, protocol, reader, loop)
        task = loop.create_task(self.stream_connected(reader, writer, listener_name))
        self._ws_tasks.add(task)
        task.add_done_callback(self._ws_tasks.discard)

    async def _client_connected(
        self, listener_name: str, reader: ReaderAdapter, writer: WriterAdapter
    ) -> None:
        # amqtt's own logged every connection and every failed one; ours counts refusals into a
        # summary line, and the caps and the login back-off close a socket before reading from it.
        server = self._servers.get(listener_name)
        if server is None:
            raise BrokerError(f"invalid listener name {listener_name!r}")
        peer = writer.get_peer_info()
        address, remote_port = (peer[0], peer[1]) if peer else ("unknown", 0)
        refusal = (
            "throttled" if self._throttle.blocked(address, self._clock.now()) else self._caps.admit(address)
        )
        if refusal is not None:
            self._refused(address, refusal)
            await writer.close()
            return
        self.counters.sockets[listener_name] += 1
        try:
            await server.acquire_connection()
            try:
                handler, session = await self._initialize_client_session(reader, writer, address, remote_port)
                await self._handle_client_session(reader, writer, session, handler, server, listener_name)
            except (AMQTTError, MQTTError, NoDataError) as exc:
                log.debug("connection ended address=%s: %s", address, exc)
            finally:
                server.release_connection()
        finally:
            self._caps.release(address)
            self.counters.sockets[listener_name] -= 1

    def _refused(self, address: str, reason: str) -> None:
        self.counters.refuse(reason)
        if self._refusals.note(address, reason, self._clock.now()) and not self._stopping:
            self._refusal_log = asyncio.get_running_loop().call_later(
                self._refusal_log_interval, self._log_refusals
            )

    def _log_refusals(self) -> None:
        if self._refusal_log is not None:
            self._refusal_log.cancel()
            self._refusal_log = None
        line = self._refusals.summary(self._clock.now())
        if line is not None:
            log.info("%s", line)

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        await self._client_connected(
            listener_name, _ConnectReader(reader, self.max_packet), StreamWriterAdapter(writer)
        )

    async def _initialize_client_session(
        self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str, remote_port: int
    ) -> tuple[Connection, Session]:
        try:
            handler, incoming = await asyncio.wait_for(
                self._read_connect(reader, writer, remote_address), self._connect_timeout
            )
        except TimeoutError as exc:
            self._refused(remote_address, "no CONNECT in time")
            await writer.close()
            raise AMQTTError(
                f"no CONNECT from {remote_address}:{remote_port} in {self._connect_timeout}s"
            ) from exc
        except MQTTError:
            self._refused(remote_address, "invalid CONNECT")
            await writer.close()
            raise
        except NoDataError as exc:
            self._refused(remote_address, "closed before CONNECT")
            await writer.close()
            raise AMQTTError(exc) from exc
        except (AMQTTError, PacketTooLarge, wire.Malformed) as exc:
            self._refused(remote_address, "bad first packet")
            await writer.close()
            raise AMQTTError(exc) from exc
        handler.broker = self

        client_id: str = incoming.client_id
        if self._throttle.blocked(remote_address, self._clock.now()):
            # Blocked while this CONNECT was on its way: not checked, or a batch of sockets
            # opened before the block would still get its guesses in.
            identity = None
            self._refused(remote_address, "throttled")
        else:
            identity = await self._authenticator(client_id, incoming.username, incoming.password)
            if identity is None:
                log.debug("connect refused client_id=%s address=%s", client_id, remote_address)
                self._throttle.failed(remote_address, self._clock.now())
                self._refused(remote_address, "bad credentials")
        if identity is None:
            writer.write(wire.encode_connack(False, NOT_AUTHORIZED))
            await writer.close()
            raise MQTTError(f"client {client_id!r} refused")

        existing = self._sessions.get(client_id)
        self._current_handler[client_id] = handler
        if existing is not None:
            old_session, old_handler = existing
            old_session.link = None  # until the new connection's CONNACK: messages wait in the outbox
            if old_session.transitions.is_connected():
                log.info("session takeover client_id=%s", client_id)
                await self._stop_handler(old_handler)
                old_session.transitions.disconnect()

        if incoming.clean_session or existing is None:
            if existing is not None:
                await self._delete_session(client_id)
            incoming.parent = 0
            session = incoming
        else:
            session = existing[0]
            for name in (
                "will_flag",
                "will_message",
                "will_topic",
                "will_qos",
                "will_retain",
                "username",
                "password",
                "remote_address",
                "remote_port",
            ):
                setattr(session, name, getattr(incoming, name))
            session.parent = 1
        session.keep_alive = math.ceil(incoming.keep_alive * KEEPALIVE_GRACE)
        session.outbox.window = self.max_inflight
        session.outbox.limit = self._offline_queue
        session.outbox.now = self._clock.now
        self._identities[client_id] = identity
        return handler, session

    async def _read_connect(
        self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str
    ) -> tuple[Connection, Session]:
        assert isinstance(reader, _ConnectReader)
        code = wire.connect_refusal(await reader.read_connect())
        if code:
            # MQTT-3.1.2-2: an MQTT 5 or 3.1 client hears "unacceptable protocol level" at once
            # (amqtt parsed its CONNECT as 3.1.1 and left it waiting for the connect timeout).
            writer.write(wire.encode_connack(False, code))
            await writer.close()
            raise MQTTError("CONNECT refused: protocol level other than MQTT 3.1.1")
        parsed = await Connection.init_from_connect(reader, writer, self.plugins_manager)
        reader.parsed()
        return parsed  # type: ignore[no-any-return]

    async def _handle_client_session(
        self,
        reader: ReaderAdapter,
        writer: WriterAdapter,
        client_session: Session,
        handler: Connection,
        server: Any,
        listener_name: str,
    ) -> None:
        client_id: str = client_session.client_id
        client_session.transitions.connect()
        handler.attach(client_session, reader, writer)
        self._sessions[client_id] = (client_session, handler)
        # Nothing is written before the CONNACK, and from here on everything goes out in order:
        # the unacknowledged messages again (DUP), then what waited offline.
        handler.write(wire.encode_connack(bool(client_session.parent), 0))
        client_session.link = handler
        identity = self._identities[client_id]
        if isinstance(identity, DeviceIdentity) and self._on_presence is not None:
            self._on_presence(identity, True)
        handler.begin()
        self.counters.connects[listener_name] += 1
        self.counters.connected[listener_name] += 1
        outbox = client_session.outbox
        outbox.resume(handler)
        if outbox.dropped:
            # Its offline queue overflowed: what was dropped is still in the retained inbox, so
            # this once the retained messages of its filters that are not queued are sent (after
            # the queue); otherwise a resumed session gets no replay.
            log.info("offline queue overflowed client_id=%s dropped=%d", client_id, outbox.dropped)
            outbox.dropped = 0
            queued = {e[0] for e in outbox.inflight.values()} | {e[0] for e in outbox.pending}
            for topic_filter, qos in self._subs.filters_of(client_id).items():
                self._replay_retained(client_session, topic_filter, qos, skip=queued)
        try:
            clean = await handler.wait_disconnect()
        finally:
            self.counters.connected[listener_name] -= 1
        await self._end_connection(client_session, handler, clean)

    async def _end_connection(self, session: Session, handler: Connection, clean: bool) -> None:
        client_id: str = session.client_id
        if self._current_handler.get(client_id) is not handler:
            return  # taken over: the new connection owns the session and its presence now
        del self._current_handler[client_id]
        session.link = None
        identity = self._identities.get(client_id)
        if isinstance(identity, DeviceIdentity) and self._on_presence is not None:
            self._on_presence(identity, False)
        if not clean and session.will_flag and session.will_topic and not self._stopping:
            # MQTT-3.1.2-8: the connection ended without DISCONNECT; the Will goes through the same
            # ACL as the client's own publishes (a device may announce only its own presence).
            self._from_client(
                client_id,
                session.will_topic,
                bytes(session.will_message or b""),
                session.will_qos or 0,
                bool(session.will_retain),
            )
        await self._stop_handler(handler)
        session.transitions.disconnect()

    async def _cleanup_session(self, client_id: str) -> None:
        entry = self._sessions.get(client_id)
        # amqtt's session monitor lists sessions, then awaits per removal: a client that
        # reconnected meanwhile must keep its new session.
        if not self._stopping and entry is not None and entry[0].transitions.is_connected():
            return
        await super()._cleanup_session(client_id)
        self._subs.remove_all(client_id)
        if client_id not in self._sessions:
            self._identities.pop(client_id, None)

    async def _delete_session(self, client_id: str) -> None:
        await super()._delete_session(client_id)
        self._subs.remove_all(client_id)

    async def _del_all_subscriptions(self, session: Session) -> None:
        self._subs.remove_all(session.client_id)

    def _del_subscription(self, a_filter: str, session: Session) -> int:
        return int(self._subs.remove(a_filter, session.client_id))

    # --- what a connection's packets do (Connection calls these) -----------------------------------

    def dirty(self, link: Connection) -> None:
        # One callback per loop turn flushes every connection written to (not one per connection).
        if not self._dirty:
            asyncio.get_running_loop().call_soon(self._flush_dirty)
        self._dirty.append(link)

    def _flush_dirty(self) -> None:
        dirty, self._dirty = self._dirty, []
        for link in dirty:
            link.flush()

    def client_publish(self, link: Connection, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self._from_client(link.session.client_id, topic, payload, qos, retain)

    def client_subscribe(self, link: Connection, packet_id: int, wanted: list[tuple[str, int]]) -> None:
        """Grant (QoS) or refuse (0x80) each filter; the ACL is decided here, once, not per message.
        SUBACK first, then the retained messages of each granted filter (MQTT-3.3.1-6)."""
        session = link.session
        identity = self._identities.get(session.client_id)
        codes: list[int] = []
        for topic_filter, qos in wanted:
            if (
                not valid_filter(topic_filter)
                or identity is None
                or not may_subscribe(identity, topic_filter)
            ):
                codes.append(0x80)
            else:
                self._subs.add(topic_filter, session.client_id, qos)
                codes.append(qos)
        link.write(wire.encode_suback(packet_id, codes))
        for (topic_filter, _), granted in zip(wanted, codes, strict=True):
            if granted != 0x80:
                self._replay_retained(session, topic_filter, granted)
        if self.on_subscribe is not None and isinstance(identity, DeviceIdentity):
            self.on_subscribe(identity, [f for (f, _), c in zip(wanted, codes, strict=True) if c != 0x80])

    def client_unsubscribe(self, link: Connection, packet_id: int, filters: list[str]) -> None:
        for topic_filter in filters:
            self._subs.remove(topic_filter, link.session.client_id)
        link.write(wire.encode_ack(UNSUBACK, packet_id))

    # --- routing ---------------------------------------------------------------------------------

    def _from_client(self, client_id: str, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        identity = self._identities.get(client_id)
        if identity is None or not may_publish(identity, topic):
            log.info("publish refused client_id=%s topic=%s", client_id, topic)
            return  # MQTT 3.1.1 has no negative PUBACK: acknowledged and dropped
        self.counters.messages_in[topic_class(topic)] += 1
        for position in sorted(self._tap_index.match(topic)) if self._taps else ():
            try:
                self._taps[position](topic, payload, identity)
            except Exception:
                # a consumer's bug must not take the publishing client's connection down
                log.exception("tap failed topic=%s", topic)
        self._route(topic, payload, qos, retain)

    def _route(
        self, topic: str, payload: bytes, qos: int, retain: bool, expires_at: float = math.inf
    ) -> None:
        """Deliver one message: indexed matching, QoS = min(published, granted) (MQTT-3.8.4-6),
        retain=0 to current subscribers (MQTT-3.3.1-9), queued for offline persistent sessions."""
        if expires_at != math.inf and expires_at <= self._clock.now():
            log.debug("expired on arrival topic=%s", topic)
            if retain:
                self._retained.discard(topic)
            return
        if retain:
            self._retain(topic, payload, qos, expires_at)
        topic_bytes = topic.encode()
        sessions = self._sessions
        check = not receive_implied_by_subscribe(topic)
        handed = 0
        for client_id, granted in self._subs.match(topic).items():
            entry = sessions.get(client_id)
            if entry is None:
                continue
            if check:
                identity = self._identities.get(client_id)
                if identity is None or not may_receive(identity, topic):
                    continue
            session = entry[0]
            link = session.link
            delivered_qos = qos if qos < granted else granted
            if link is None and session.clean_session and not session.transitions.is_connected():
                continue  # a clean session that is gone keeps nothing (MQTT-3.1.2-6)
            session.outbox.offer(link, topic_bytes, payload, delivered_qos, False, expires_at)
            handed += 1
        if handed:
            self.counters.messages_out[topic_class(topic)] += handed

    def _retain(self, topic: str, payload: bytes, qos: int, expires_at: float = math.inf) -> None:
        if payload:
            self._retained.set(topic, (payload, qos, expires_at))
            if expires_at != math.inf:
                heapq.heappush(self._expiring, (expires_at, topic))
        else:
            self._retained.discard(topic)  # MQTT-3.3.1-10: an empty retained message clears

    def _replay_retained(
        self,
        session: Session,
        topic_filter: str,
        granted: int,
        skip: frozenset[bytes] | set[bytes] = frozenset(),
    ) -> None:
        identity = self._identities.get(session.client_id)
        if identity is None:
            return
        now = self._clock.now()
        for topic, (payload, qos, expires_at) in self._retained.match(topic_filter):
            if expires_at <= now:
                self._retained.discard(topic)  # lazily: the sweep would have taken it later
                continue
            encoded = topic.encode()
            if encoded not in skip and may_receive(identity, topic):
                session.outbox.offer(session.link, encoded, payload, min(granted, qos), True, expires_at)
                self.counters.messages_out[topic_class(topic)] += 1

    # --- amqtt paths that must not be taken any more ---------------------------------------------

    async def retain_message(
        self,
        source_session: Session | None,
        topic_name: str | None,
        data: bytes | bytearray | None,
        qos: int | None = None,
    ) -> None:
        if topic_name is not None:
            self._retain(topic_name, bytes(data or b""), qos or 0)

    async def _broadcast_message(
        self,
        session: Session | None,
        topic: str | None,
        data: bytes | bytearray | None,
        force_qos: int | None = None,
    ) -> None:
        if topic:
            self._route(topic, bytes(data or b""), 0 if force_qos is None else force_qos, False)
