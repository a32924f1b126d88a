"""What one address may cost the broker (issue 18 item 4): connection caps, the failed-login
back-off, one summary log line instead of one per refusal, and first packets closed at once
(docs/security.md). Raw sockets on 127.0.0.1, so the limits are set small."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from mqttpush.broker import BrokerLimits, PushBroker
from mqttpush.broker.limits import ConnectionCaps, LoginThrottle, RefusalSummary
from mqttpush.clock import ManualClock
from mqttpush.topics import DeviceIdentity, Identity
from tests.mqtt_raw import RawClient, connect_packet, first_answer, packet

PROMPT = 3.0  # well under the connect timeout below: an answer in time is not the timeout
GOOD = ("dev", "right")


async def _authenticate(client_id: str, user: str | None, password: str | None) -> Identity | None:
    return DeviceIdentity("app", client_id) if (user, password) == GOOD else None


MakeBroker = Callable[..., "asyncio.Future[PushBroker]"]


@pytest.fixture
async def make_broker() -> AsyncIterator[MakeBroker]:
    started: list[PushBroker] = []

    async def start(limits: BrokerLimits, clock: ManualClock | None = None) -> PushBroker:
        b = PushBroker(
            host="127.0.0.1",
            port=0,
            authenticator=_authenticate,
            connect_timeout=30,
            limits=limits,
            clock=clock,
        )
        await b.start()
        started.append(b)
        return b

    yield lambda limits, clock=None: asyncio.ensure_future(start(limits, clock))
    for b in started:
        await b.shutdown()


async def _connect(port: int, password: str) -> tuple[RawClient, int]:
    client, code, _ = await RawClient.connect(port, GOOD[0], GOOD[0], password, timeout=PROMPT)
    return client, code


# --- first packets that are closed at once ------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [
        packet(0x30, b"\x00\x01a" + b"hi"),  # PUBLISH before CONNECT (MQTT-3.1.0-1)
        bytes([0x12]) + connect_packet("dev")[1:],  # flags 0010 (MQTT-2.2.2-2)
        bytes([0x1F]) + connect_packet("dev")[1:],  # flags 1111 (MQTT-2.2.2-2)
        b"\x10\xff\xff\xff\x7f",  # CONNECT announcing 268,435,455 bytes
        b"GET / HTTP/1.1\r\n\r\n",
    ],
    ids=["publish first", "connect flags 0010", "connect flags 1111", "268 MB connect", "http"],
)
async def test_a_bad_first_packet_is_closed_at_once(make_broker: MakeBroker, first: bytes) -> None:
    broker = await make_broker(BrokerLimits())
    got, closed = await first_answer(broker.port, first, PROMPT)
    assert (got, closed) == (b"", True)


# --- connection caps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limits",
    [BrokerLimits(max_connections_per_ip=2), BrokerLimits(max_connections=2)],
    ids=["per address", "global"],
)
async def test_sockets_over_a_cap_are_closed_before_connect(
    make_broker: MakeBroker, limits: BrokerLimits
) -> None:
    broker = await make_broker(limits)
    idle = [await asyncio.open_connection("127.0.0.1", broker.port) for _ in range(2)]
    got, closed = await first_answer(broker.port, connect_packet("dev"), PROMPT)
    assert (got, closed) == (b"", True)  # not even read: no CONNACK

    # a slot that frees up is usable again
    reader, writer = idle.pop()
    writer.write(b"\xc0\x00")  # PINGREQ first: the broker closes it, and releases its slot
    assert await reader.read() == b""
    writer.close()
    client, code = await _connect(broker.port, GOOD[1])
    assert code == 0
    await client.close()
    for _, w in idle:
        w.close()


def test_caps_count_per_address_and_in_total() -> None:
    caps = ConnectionCaps(total=3, per_address=2)
    assert caps.admit("a") is None and caps.admit("a") is None
    assert caps.admit("a") == "over the per-address cap"
    assert caps.admit("b") is None
    assert caps.admit("c") == "over the connection cap"
    caps.release("a")
    assert caps.of("a") == 1 and caps.open == 2
    assert caps.admit("c") is None


# --- failed-login back-off ----------------------------------------------------------------------


def test_throttle_blocks_after_the_threshold_and_doubles() -> None:
    t = LoginThrottle(threshold=3, window=60, backoff=1, max_backoff=4)
    now = 1000.0
    for _ in range(2):
        t.failed("a", now)
    assert not t.blocked("a", now)
    t.failed("a", now)
    assert t.blocked("a", now) and t.blocked("a", now + 0.99) and not t.blocked("a", now + 1)
    assert not t.blocked("b", now)  # other addresses are not touched
    delays = []
    for _ in range(4):
        now += 10
        t.failed("a", now)
        until = now
        while t.blocked("a", until):
            until += 0.5
        delays.append(until - now)
    assert delays == [2, 4, 4, 4]  # doubling, capped at max_backoff


def test_throttle_starts_over_after_a_quiet_window() -> None:
    t = LoginThrottle(threshold=2, window=60, backoff=1, max_backoff=300)
    t.failed("a", 0)
    t.failed("a", 70)  # more than a window later: the first one no longer counts
    assert not t.blocked("a", 70)
    t.failed("a", 80)
    assert t.blocked("a", 80)
    t.failed("a", 200)
    assert not t.blocked("a", 200)  # blocked, then quiet for a window: back to the start
    t.prune(500)
    assert len(t) == 0


async def test_failed_logins_block_the_address_then_lift(
    make_broker: MakeBroker,
) -> None:
    clock = ManualClock()
    broker = await make_broker(BrokerLimits(login_failures=3, login_backoff=5), clock)
    before, code = await _connect(broker.port, GOOD[1])
    assert code == 0
    for _ in range(3):
        client, code = await _connect(broker.port, "wrong")
        assert code == 5
        assert await client.closed_by_server(PROMPT)

    # blocked: closed unread, good credentials or not (documented in docs/security.md)
    for password in ("wrong", GOOD[1]):
        got, closed = await first_answer(broker.port, _connect_bytes(password), PROMPT)
        assert (got, closed) == (b"", True)

    # a connection made before the block carries on
    before.writer.write(b"\xc0\x00")
    first, _ = await asyncio.wait_for(before.read_packet(), PROMPT)
    assert first == 0xD0  # PINGRESP
    await before.close()

    # the block lifts after the back-off (5 s of the broker's clock)
    clock.advance(5)
    client, code = await _connect(broker.port, GOOD[1])
    assert code == 0
    await client.close()


def _connect_bytes(password: str) -> bytes:
    import struct

    def s(v: str) -> bytes:
        return struct.pack("!H", len(v)) + v.encode()

    body = s("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 60) + s(GOOD[0]) + s(GOOD[0]) + s(password)
    return packet(0x10, body)


# --- refusals logged as a summary ---------------------------------------------------------------


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.summary = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.INFO:
            self.lines.append(record.getMessage())
            if record.getMessage().startswith("refused"):
                self.summary.set()


async def test_refused_logins_are_logged_as_one_summary_line(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker(BrokerLimits(refusal_log_interval=0.2))
    handler = _Lines()
    logger = logging.getLogger("mqttpush.broker")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        for _ in range(5):
            client, code = await _connect(broker.port, "wrong")
            assert code == 5
            await client.close()
        await asyncio.wait_for(handler.summary.wait(), PROMPT)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert handler.lines == [handler.lines[0]]  # one line for five refusals, not five
    assert handler.lines[0].startswith("refused 5 connections from 1 address in the last ")
    assert handler.lines[0].endswith("(bad credentials 5); top: 127.0.0.1 (5)")


def test_summary_counts_reasons_and_top_addresses() -> None:
    s = RefusalSummary(top=2)
    assert s.summary(0) is None
    assert s.note("a", "bad credentials", 100) is True
    assert s.note("a", "throttled", 101) is False
    s.note("b", "throttled", 102)
    s.note("c", "throttled", 103)
    assert s.summary(110) == (
        "refused 4 connections from 3 addresses in the last 10 s"
        " (throttled 3, bad credentials 1); top: a (2), b (1)"
    )
    assert s.summary(120) is None  # drained
