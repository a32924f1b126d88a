"""One device connection after CONNACK, and the outgoing half of its session.

amqtt's ``BrokerProtocolHandler`` reads a packet with three awaits, builds an object graph for it,
starts a task per packet and another per outgoing PUBLISH, fires plugin events for each, and keeps
four waiter tasks per connection in the broker's client loop; that was ~0.5 ms of CPU per message
and most of a connection's memory. ``Connection`` reads the socket in chunks, handles every packet
inline (``wire``), and writes PUBLISH bytes straight to the transport; ``Outbox`` keeps the QoS 1
and 2 flows of a session in two plain containers. amqtt still reads the CONNECT, owns the listener
and the session objects.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

from mqttpush.broker import wire

if TYPE_CHECKING:
    from amqtt.adapters import ReaderAdapter, WriterAdapter
    from amqtt.session import Session

log = logging.getLogger("mqttpush.broker")

READ_CHUNK = 65536
QOS0_BUFFER_LIMIT = 1 << 20
"""QoS 0 messages are dropped for a client whose socket has this many bytes unsent (a slow reader
must not grow the broker's memory); QoS 1 and 2 are bounded by the in-flight window instead."""


class Outbox:
    """Outgoing QoS 1/2 state of one session (MQTT-4.4.0-1): survives reconnects of the client.

    ``inflight`` maps packet id → ``[topic, payload, qos, retain, released, expires_at]`` in send
    order (dicts keep insertion order, which is the resend order); at most ``window`` of them.
    Messages beyond the window, or for a persistent session while it is offline, wait in
    ``pending``, bounded by ``limit`` (oldest dropped first: the retained inbox in the store still
    holds them). A pending message whose ``expires_at`` (unix seconds, ``now()``'s clock) has
    passed is dropped instead of sent; one already sent is re-sent until acknowledged, as MQTT 5
    does for a message whose onward delivery has started (§3.3.2.3.3).
    """

    __slots__ = ("dropped", "inflight", "limit", "next_id", "now", "pending", "received", "window")

    def __init__(self, window: int = 100, limit: int = 1000) -> None:
        self.inflight: dict[int, list[Any]] = {}
        self.pending: deque[list[Any]] = deque()
        self.received: set[int] = set()  # incoming QoS 2 packet ids routed, PUBREL not yet seen
        self.next_id = 0
        self.window = window
        self.limit = limit
        self.dropped = 0
        self.now: Callable[[], float] = time.time  # the broker's clock, set at CONNECT

    def offer(
        self,
        link: Connection | None,
        topic: bytes,
        payload: bytes,
        qos: int,
        retain: bool,
        expires_at: float = math.inf,
    ) -> None:
        """Send now if the client is connected and the window has room, else queue (QoS > 0)."""
        if qos == 0:
            if link is not None and link.buffered() < QOS0_BUFFER_LIMIT:
                link.write(wire.encode_publish(topic, payload, 0, retain, 0, False))
            return
        if link is not None and not self.pending and len(self.inflight) < self.window:
            self._send(link, [topic, payload, qos, retain, False, expires_at])
            return
        if len(self.pending) >= self.limit:
            self.pending.popleft()
            self.dropped += 1
        self.pending.append([topic, payload, qos, retain, False, expires_at])

    def _send(self, link: Connection, entry: list[Any]) -> None:
        pid = self.next_id
        while True:
            pid = pid % 65535 + 1
            if pid not in self.inflight:
                break
        self.next_id = pid
        self.inflight[pid] = entry
        link.write(wire.encode_publish(entry[0], entry[1], entry[2], entry[3], pid, False))

    def pump(self, link: Connection) -> None:
        pending = self.pending
        if not pending:
            return
        now = self.now()
        while pending and len(self.inflight) < self.window:
            entry = pending.popleft()
            if entry[5] > now:
                self._send(link, entry)

    def resume(self, link: Connection) -> None:
        """After a reconnect: re-send what is unacknowledged, in order, PUBLISH with DUP=1 or the
        PUBREL of a QoS 2 message already PUBREC'd (MQTT-4.4.0-1), then what waited."""
        for pid, (topic, payload, qos, retain, released, _) in self.inflight.items():
            if released:
                link.write(wire.encode_ack(wire.PUBREL, pid))
            else:
                link.write(wire.encode_publish(topic, payload, qos, retain, pid, True))
        self.pump(link)

    def acknowledged(self, link: Connection, pid: int, qos: int) -> None:
        """PUBACK (qos 1) or PUBCOMP (qos 2) of ``pid``: the message is done."""
        entry = self.inflight.get(pid)
        if entry is None or entry[2] != qos or (qos == 2 and not entry[4]):
            log.debug("ack for unknown packet id %d (qos %d)", pid, qos)
            return
        del self.inflight[pid]
        if self.pending:
            self.pump(link)

    def release(self, link: Connection, pid: int) -> None:
        """PUBREC of ``pid``: answer PUBREL (also for an unknown id, so the client can finish)."""
        entry = self.inflight.get(pid)
        if entry is not None and entry[2] == 2:
            entry[4] = True
        link.write(wire.encode_ack(wire.PUBREL, pid))

    def clear(self) -> None:
        self.inflight.clear()
        self.pending.clear()
        self.received.clear()


class Broker(Protocol):
    """What a ``Connection`` asks of its broker (``PushBroker`` implements it)."""

    max_packet: int

    def dirty(self, link: Connection) -> None:
        """``link`` has writes waiting: call its ``flush()`` at the end of this event-loop turn."""
        ...

    def client_publish(
        self, link: Connection, topic: str, payload: bytes, qos: int, retain: bool
    ) -> None: ...

    def client_subscribe(self, link: Connection, packet_id: int, wanted: list[tuple[str, int]]) -> None: ...

    def client_unsubscribe(self, link: Connection, packet_id: int, filters: list[str]) -> None: ...


class Connection(BrokerProtocolHandler, asyncio.Protocol):  # type: ignore[misc]
    """The connection of one client, from CONNACK to close.

    After CONNACK it is the transport's protocol itself (``data_received``): no reader task, no
    stream buffer, no future per read. What it writes during one turn of the event loop goes out
    in one ``transport.write`` at the end of the turn (a burst of PUBACKs to a publisher, or of
    PUBLISHes to one subscriber, is one syscall). ``wait_disconnect()`` resolves True after a
    DISCONNECT, False when the connection ended any other way (its Will is then due).
    """

    broker: Broker
    session: Session

    def __init__(self, plugins_manager: Any, session: Session | None = None, loop: Any = None) -> None:
        # amqtt's __init__ allocates queues, events, a lock and waiter dicts this class never uses.
        self.plugins_manager = plugins_manager
        self.logger = log
        self.reader: ReaderAdapter | None = None
        self.writer: WriterAdapter | None = None
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] | None = None  # written this turn, not yet handed to the transport
        self._buf = bytearray()
        self._keepalive: asyncio.TimerHandle | None = None
        self._disconnected: asyncio.Future[bool] | None = None
        self._last_read = 0.0

    def attach(self, session: Session, reader: ReaderAdapter, writer: WriterAdapter) -> None:
        self.session = session
        self.reader = reader
        self.writer = writer
        self._transport = writer._writer.transport

    # --- writing ---------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        out = self._out
        if out is not None:
            out.append(data)
            return
        transport = self._transport
        if transport is not None and not transport.is_closing():
            self._out = [data]
            self.broker.dirty(self)

    def flush(self) -> None:
        out, self._out = self._out, None
        transport = self._transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def buffered(self) -> int:
        transport = self._transport
        return transport.get_write_buffer_size() if transport is not None else 0

    # --- lifecycle -------------------------------------------------------------------------------

    def begin(self) -> None:
        """Take the socket over from amqtt's stream; call after CONNACK is written."""
        loop = asyncio.get_running_loop()
        self._disconnected = loop.create_future()
        self._last_read = loop.time()
        transport = self._transport
        assert transport is not None
        stream: asyncio.StreamReader = self.reader.stream  # type: ignore[union-attr]
        buffered: bytearray = stream._buffer  # type: ignore[attr-defined]  # sent right behind CONNECT
        leftover = bytes(buffered)
        buffered.clear()
        at_eof = stream.at_eof() or transport.is_closing()
        transport.set_protocol(self)
        transport.resume_reading()  # the stream may have paused it with a full buffer
        if self.session.keep_alive > 0:
            self._keepalive = loop.call_later(self.session.keep_alive, self._check_keepalive)
        if leftover:
            self.data_received(leftover)
        if at_eof:
            self._finish(False)

    async def wait_disconnect(self) -> bool:
        assert self._disconnected is not None
        return await self._disconnected

    def _finish(self, clean: bool) -> None:
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(clean)

    async def handle_connection_closed(self) -> None:
        self._finish(False)

    async def stop(self) -> None:
        """Close the socket after what is written so far, without waiting for the peer to read it."""
        self._finish(False)
        if self._keepalive is not None:
            self._keepalive.cancel()
        self.flush()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def _check_keepalive(self) -> None:
        # A client silent for 1.5 × its keepalive is gone (half-open socket): MQTT-3.1.2-24.
        loop = asyncio.get_running_loop()
        keep_alive = self.session.keep_alive
        idle = loop.time() - self._last_read
        if idle < keep_alive:
            self._keepalive = loop.call_later(keep_alive - idle, self._check_keepalive)
            return
        log.info("keepalive expired client_id=%s", self.session.client_id)
        self._finish(False)
        if self._transport is not None:
            self._transport.abort()

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        done = self._disconnected
        if done is None or done.done():
            return  # after DISCONNECT or a protocol error nothing more is read
        self._last_read = asyncio.get_running_loop().time()
        buf = self._buf
        buf += data
        try:
            used = wire.split(buf, self.broker.max_packet, self._on_packet)
        except wire.Malformed as exc:
            log.info("closing client_id=%s: %s", self.session.client_id, exc)
            self._finish(False)
            return
        except Exception:
            log.exception("closing client_id=%s after an internal error", self.session.client_id)
            self._finish(False)
            return
        if used:
            del buf[:used]

    def eof_received(self) -> bool:
        self._finish(False)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.debug("connection of client_id=%s ended: %r", self.session.client_id, exc)
        self._finish(False)

    def _on_packet(self, first: int, body: bytes) -> bool:
        if first >> 4 == wire.PUBLISH:
            self._on_publish(first, body)
        elif first == wire.PUBACK:
            self.session.outbox.acknowledged(self, wire.packet_id(body), 1)
        elif first == wire.PINGREQ:
            if body:
                raise wire.Malformed("PINGREQ with a body")
            self.write(wire.PINGRESP_BYTES)
        elif first == wire.SUBSCRIBE:
            pid, wanted = wire.parse_subscribe(body)
            self.broker.client_subscribe(self, pid, wanted)
        elif first == wire.UNSUBSCRIBE:
            pid, filters = wire.parse_unsubscribe(body)
            self.broker.client_unsubscribe(self, pid, filters)
        elif first == wire.PUBREC:
            self.session.outbox.release(self, wire.packet_id(body))
        elif first == wire.PUBCOMP:
            self.session.outbox.acknowledged(self, wire.packet_id(body), 2)
        elif first == wire.PUBREL:
            pid = wire.packet_id(body)
            self.session.outbox.received.discard(pid)
            self.write(wire.encode_ack(wire.PUBCOMP, pid))
        elif first == wire.DISCONNECT:
            if body:
                raise wire.Malformed("DISCONNECT with a body")
            self._finish(True)
            return False
        elif first == wire.CONNECT:
            raise wire.Malformed("second CONNECT (MQTT-3.1.0-2)")
        else:
            raise wire.Malformed(f"unexpected packet type {first >> 4} with flags {first & 15:#x}")
        return True

    def _on_publish(self, first: int, body: bytes) -> None:
        topic, payload, qos, retain, pid = wire.parse_publish(first, body)
        if not topic or "+" in topic or "#" in topic:
            raise wire.Malformed(f"PUBLISH to {topic!r}: not a topic name (MQTT-3.3.2-2, MQTT-4.7.3-1)")
        if qos == 2:
            # Delivered onward at PUBLISH, once per packet id until its PUBREL (MQTT-4.3.3-2, method B).
            received = self.session.outbox.received
            if pid not in received:
                received.add(pid)
                self.broker.client_publish(self, topic, payload, qos, retain)
            self.write(wire.encode_ack(wire.PUBREC, pid))
            return
        self.broker.client_publish(self, topic, payload, qos, retain)
        if qos == 1:
            self.write(wire.encode_ack(wire.PUBACK, pid))
