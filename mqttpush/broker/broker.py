"""``PushBroker``: an amqtt 0.12.1 ``Broker`` subclass that behaves as a push broker must.

What we replace, and why (see shared/notes/amqtt-0.12.1.md):

* **Authentication before any session change.** amqtt deletes or rewrites the session of a
  client id *before* it checks the password, so a CONNECT with a victim's id and a wrong
  token wiped the victim's subscriptions. We authenticate right after reading CONNECT and
  refuse with CONNACK 5 without touching any session.
* **Retained replay on CONNECT** covers only the connecting session's own subscriptions
  (amqtt replayed the retained messages of *every* filter in the broker to every client,
  and awaited while iterating the subscriptions dict, which raised ``RuntimeError:
  dictionary changed size during iteration`` under concurrent connects).
* **ACL** (DESIGN §2) on SUBSCRIBE, PUBLISH, live delivery and retained delivery alike.
* **Queued messages of a persistent session** go out with retain=0 (MQTT-3.3.1-9), not 1.
* **Keepalive** enforced: a client silent for 1.5 × its keepalive is disconnected and its
  Will published (amqtt's read-timeout handler was a no-op).
* **Takeover** by the same client id closes the old connection without letting it mark the
  new one offline.
* A CONNECT must arrive within ``connect_timeout`` seconds of the socket opening.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import amqtt.broker as amqtt_broker_module
import amqtt.mqtt.protocol.broker_handler as amqtt_broker_handler_module
from amqtt.adapters import ReaderAdapter, StreamReaderAdapter, StreamWriterAdapter, WriterAdapter
from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.contexts import Action, ListenerType
from amqtt.errors import AMQTTError, BrokerError, MQTTError, NoDataError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import OUTGOING, Session
from transitions import MachineError

from mqttpush.broker.index import RetainedIndex, SubscriptionIndex
from mqttpush.errors import StartupError
from mqttpush.topics import (
    DeviceIdentity,
    Identity,
    may_publish,
    may_receive,
    may_subscribe,
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

KEEPALIVE_GRACE = 1.5  # MQTT-3.1.2-24

# The QoS of the PUBLISH being routed, for the client task handling it (amqtt drops it on the way).
_publish_qos: contextvars.ContextVar[int | None] = contextvars.ContextVar("publish_qos", default=None)


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
    def _init_states(self) -> None:
        self.transitions = _SessionState(self)


# amqtt creates sessions by the module-level name in these two places; ours are lean.
amqtt_broker_module.Session = _LeanSession
amqtt_broker_handler_module.Session = _LeanSession


class PacketTooLarge(Exception):
    """A client announced a packet over the broker's limit; its connection is closed unread."""


class _LimitedReader(ReaderAdapter):  # type: ignore[misc]
    # amqtt reads a packet's body with one read(remaining_length): refuse before buffering it.
    def __init__(self, inner: ReaderAdapter, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    async def read(self, n: int = -1) -> bytes:
        if n > self._limit:
            raise PacketTooLarge(f"packet body of {n} bytes, the limit is {self._limit}")
        data: bytes = await self._inner.read(n)
        return data

    def feed_eof(self) -> None:
        self._inner.feed_eof()


class _PushProtocolHandler(BrokerProtocolHandler):  # type: ignore[misc]
    max_inflight = 100

    def handle_read_timeout(self) -> None:
        # The reader waited 1.5 × keepalive for a packet: the client is gone (half-open socket).
        log.info("keepalive expired client_id=%s", self.session.client_id if self.session else None)
        asyncio.get_running_loop().create_task(self.handle_connection_closed())

    async def _handle_qos1_message_flow(self, app_message: Any) -> None:
        """Outgoing QoS 1 without amqtt's 5 s give-up: a message stays in flight (in the session)
        until its PUBACK, across reconnects, and is re-sent with DUP=1 (MQTT-4.4.0-1)."""
        if app_message.direction != OUTGOING:
            await super()._handle_qos1_message_flow(app_message)
            return
        session = self.session
        packet_id = app_message.packet_id
        slots = session.attributes.setdefault("mqttpush.inflight", asyncio.Semaphore(self.max_inflight))
        async with slots:
            session.inflight_out.setdefault(packet_id, app_message)
            packet = app_message.build_publish_packet(dup=app_message.publish_packet is not None)
            waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._puback_waiters[packet_id] = waiter
            try:
                await self._send_packet(packet)
                app_message.publish_packet = packet
                app_message.puback_packet = await waiter
                session.inflight_out.pop(packet_id, None)
            finally:
                self._puback_waiters.pop(packet_id, None)

    async def _retry_deliveries(self) -> None:
        # Re-send what the session still has in flight, in order, without holding up the connect
        # (amqtt waited up to 10 s per message here, before the client's SUBSCRIBEs were handled).
        for message in [*self.session.inflight_in.values(), *self.session.inflight_out.values()]:
            task = asyncio.ensure_future(self._handle_message_flow(message))
            task.add_done_callback(_ignore_result)


def _ignore_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # a connection that ended meanwhile: the message stays in the session


class PushBroker(Broker):  # type: ignore[misc]
    """The embedded broker. Start with ``await broker.start()``; ``broker.port`` is the bound port."""

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
    ) -> None:
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {},
        }
        super().__init__(config)
        self._authenticator = authenticator
        self._on_presence = on_presence
        self._connect_timeout = connect_timeout
        self._max_packet = max_packet
        self._offline_queue = offline_queue
        self._backlog = backlog
        self._identities: dict[str, Identity] = {}
        self._current_handler: dict[str, BrokerProtocolHandler] = {}
        # Who gets a PUBLISH: exact filters in a dict, wildcards in a trie (amqtt walked every filter).
        self._subs: SubscriptionIndex[str] = SubscriptionIndex()
        # Retained messages by topic, found by filter in O(matches) (amqtt scanned them all).
        self._retained: RetainedIndex[RetainedApplicationMessage] = RetainedIndex()
        self._taps: list[tuple[str, Tap]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._stopping = False

    # --- public surface (used in-process by the bridge's publisher) ---------------------------

    @property
    def port(self) -> int:
        server = self._servers["default"].instance
        return int(server.sockets[0].getsockname()[1])

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish as the broker itself (no socket): retained first, then to current subscribers."""
        if retain:
            await self.retain_message(None, topic, payload, qos)
        await self._broadcast_message(None, topic, payload, qos)

    async def clear_retained(self, topic: str) -> None:
        """Drop the retained message of ``topic`` without sending anything to subscribers."""
        await self.retain_message(None, topic, b"", None)

    def tap(self, topic_filter: str, callback: Tap) -> None:
        """Have ``callback`` see every client PUBLISH on ``topic_filter`` that the ACL let through."""
        self._taps.append((topic_filter, callback))

    def retained_topics(self) -> list[str]:
        return self._retained.topics()

    def retained_payload(self, topic: str) -> bytes | None:
        found = self._retained.get(topic)
        return bytes(found.data) if found is not None else None

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

    async def shutdown(self) -> None:
        self._stopping = True
        for task in list(self._background):
            task.cancel()
        await super().shutdown()

    # --- CONNECT -------------------------------------------------------------------------------

    async def _create_server_instance(
        self, listener_name: str, listener_type: Any, address: str | None, port: int, ssl_context: Any
    ) -> Any:
        if listener_type != ListenerType.TCP:
            return await super()._create_server_instance(
                listener_name, listener_type, address, port, ssl_context
            )
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

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        await self._client_connected(
            listener_name,
            _LimitedReader(StreamReaderAdapter(reader), self._max_packet),
            StreamWriterAdapter(writer),
        )

    async def _initialize_client_session(
        self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        try:
            handler, incoming = await asyncio.wait_for(
                _PushProtocolHandler.init_from_connect(reader, writer, self.plugins_manager),
                self._connect_timeout,
            )
        except TimeoutError as exc:
            await writer.close()
            raise AMQTTError(
                f"no CONNECT from {remote_address}:{remote_port} in {self._connect_timeout}s"
            ) from exc
        except MQTTError:
            await writer.close()
            raise
        except (AMQTTError, NoDataError) as exc:
            await writer.close()
            raise AMQTTError(exc) from exc

        client_id: str = incoming.client_id
        identity = await self._authenticator(client_id, incoming.username, incoming.password)
        if identity is None:
            log.info("connect refused client_id=%s address=%s", client_id, remote_address)
            await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await writer.close()
            raise MQTTError(f"client {client_id!r} refused: bad credentials")

        existing = self._sessions.get(client_id)
        self._current_handler[client_id] = handler
        if existing is not None:
            old_session, old_handler = existing
            if old_session.transitions.is_connected():
                log.info("session takeover client_id=%s", client_id)
                await old_handler.handle_connection_closed()
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
        self._identities[client_id] = identity
        return handler, session

    async def _handle_client_session(
        self,
        reader: ReaderAdapter,
        writer: WriterAdapter,
        client_session: Session,
        handler: BrokerProtocolHandler,
        server: Any,
        listener_name: str,
    ) -> None:
        client_id: str = client_session.client_id
        client_session.transitions.connect()
        handler.attach(client_session, reader, writer)
        self._sessions[client_id] = (client_session, handler)
        await handler.mqtt_connack_authorize(True)
        identity = self._identities[client_id]
        if isinstance(identity, DeviceIdentity) and self._on_presence is not None:
            self._on_presence(identity, True)

        await handler.start()
        await self._publish_session_retained_messages(client_session)
        for topic_filter, qos in self._subs.filters_of(client_id).items():
            await self._publish_retained_messages_for_subscription((topic_filter, qos), client_session)
        await self._client_message_loop(client_session, handler)

    async def _handle_disconnect(
        self, client_session: Session, handler: BrokerProtocolHandler, disconnect_waiter: asyncio.Future[Any]
    ) -> None:
        client_id: str = client_session.client_id
        if self._current_handler.get(client_id) is not handler:
            return  # taken over: the new connection owns the session and its presence now
        del self._current_handler[client_id]
        identity = self._identities.get(client_id)
        if isinstance(identity, DeviceIdentity) and self._on_presence is not None:
            self._on_presence(identity, False)
        await super()._handle_disconnect(client_session, handler, disconnect_waiter)

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

    # --- ACL -----------------------------------------------------------------------------------

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        identity = self._identities.get(session.client_id)
        if identity is None:
            return False
        if action == Action.SUBSCRIBE:
            return may_subscribe(identity, topic)
        if action == Action.PUBLISH:
            return may_publish(identity, topic)
        return may_receive(identity, topic)

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        """Grant (QoS) or refuse (0x80) one filter; the ACL is decided here, once, not per message."""
        topic_filter, qos = subscription
        identity = self._identities.get(session.client_id)
        if not valid_filter(topic_filter) or identity is None or not may_subscribe(identity, topic_filter):
            return 0x80
        granted = min(max(qos, 0), 2)
        self._subs.add(topic_filter, session.client_id, granted)
        return granted

    def _del_subscription(self, a_filter: str, session: Session) -> int:
        return int(self._subs.remove(a_filter, session.client_id))

    # --- retained and queued messages ------------------------------------------------------------

    async def retain_message(
        self,
        source_session: Session | None,
        topic_name: str | None,
        data: bytes | bytearray | None,
        qos: int | None = None,
    ) -> None:
        # Kept in our index only (amqtt's dict and its per-message plugin events are not needed).
        if topic_name is None:
            return
        if data:
            self._retained.set(topic_name, RetainedApplicationMessage(source_session, topic_name, data, qos))
        else:
            self._retained.discard(topic_name)  # MQTT-3.3.1-10: an empty retained message clears

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        client_id: str = session.client_id
        granted = self._subs.filters_of(client_id).get(subscription[0])
        identity = self._identities.get(client_id)
        handler = self._get_handler(session)
        if granted is None or identity is None or handler is None:
            return
        for _topic, retained in self._retained.match(subscription[0]):
            if may_receive(identity, retained.topic):
                qos = min(granted, retained.qos if retained.qos is not None else granted)
                self._spawn(handler.mqtt_publish(retained.topic, retained.data, qos, retain=True))

    async def _publish_session_retained_messages(self, session: Session) -> None:
        handler = self._get_handler(session)
        identity = self._identities.get(session.client_id)
        while handler is not None and identity is not None and not session.retained_messages.empty():
            queued = session.retained_messages.get_nowait()
            if may_receive(identity, queued.topic):
                self._spawn(handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=False))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("publish to client ended: %r", task.exception())

    # --- taps ------------------------------------------------------------------------------------

    async def _broadcast_message(
        self,
        session: Session | None,
        topic: str | None,
        data: bytes | bytearray | None,
        force_qos: int | None = None,
    ) -> None:
        if session is not None and topic is not None and self._taps:
            identity = self._identities.get(session.client_id)
            if identity is not None:
                for topic_filter, callback in self._taps:
                    if topic_matches(topic, topic_filter):
                        try:
                            callback(topic, bytes(data or b""), identity)
                        except Exception:
                            # a consumer's bug must not take the publishing client's connection down
                            log.exception("tap failed topic=%s", topic)
        if force_qos is None and session is not None:
            force_qos = _publish_qos.get()  # the QoS the client published with
        await super()._broadcast_message(session, topic, data, force_qos)

    async def _handle_message_delivery(
        self, client_session: Session, handler: BrokerProtocolHandler, wait_deliver: asyncio.Future[Any]
    ) -> bool:
        message = wait_deliver.result()
        _publish_qos.set(message.qos if message is not None and message.qos is not None else 0)
        return bool(await super()._handle_message_delivery(client_session, handler, wait_deliver))

    async def _run_broadcast(self, running_tasks: deque[asyncio.Task[Any]]) -> None:
        """Deliver one message: indexed matching, QoS = min(published, granted) (MQTT-3.8.4-6),
        a bounded queue for offline persistent sessions (oldest dropped first)."""
        broadcast = await self._broadcast_queue.get()
        topic: str = broadcast["topic"]
        data = broadcast["data"]
        published_qos = broadcast.get("qos")
        for client_id, granted in self._subs.match(topic).items():
            entry = self._sessions.get(client_id)
            identity = self._identities.get(client_id)
            if entry is None or identity is None or not may_receive(identity, topic):
                continue
            session, handler = entry
            qos = granted if published_qos is None else min(published_qos, granted)
            if session.transitions.state != "connected":
                if not session.clean_session and qos > 0:
                    queue = session.retained_messages
                    if queue.qsize() >= self._offline_queue:
                        queue.get_nowait()
                    queue.put_nowait(RetainedApplicationMessage(broadcast["session"], topic, data, qos))
                continue
            running_tasks.append(asyncio.ensure_future(handler.mqtt_publish(topic, data, qos, retain=False)))
