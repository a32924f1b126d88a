"""Devices and an app server for the cluster fault tests (tests/cluster/test_faults.py).

Devices are lean MQTT clients (benchmarks/mqtt.py), a thousand in one process: each connects
(first to the port it is given, afterwards through the load balancer), subscribes to its inbox
and its app's broadcasts, acknowledges what it gets with an ``arrived`` receipt, and connects
again when its connection ends, as a phone would. What it receives is counted by message id
(a device dedupes by id: the count shows repeats, the set what arrived).

The app server pushes with the lean HTTP client (benchmarks/lean_http.py) through the bridges'
load balancer, each push with a ``biz_id``; a push that got no 202 (connection cut, the load
balancer's 502/503, the API's 503) is sent again with the same ``biz_id``, so it is never
accepted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.lean_http import HttpError, SignedConnection
from benchmarks.mqtt import Connection, ConnectRefused, open_connection

HOST = "127.0.0.1"
RETRY_STATUSES = frozenset({502, 503, 504})
"""What a push may meet while a bridge or the store is away: the load balancer's 502/503/504 and
the API's 503 (``store_unavailable``, ``overloaded``)."""


@dataclass(frozen=True)
class Credentials:
    device_id: str
    token: str


class Device:
    """One simulated device; :meth:`start` runs it until :meth:`stop`."""

    def __init__(self, fleet: Fleet, creds: Credentials, port: int) -> None:
        self.fleet = fleet
        self.creds = creds
        self.port = port
        self.received: dict[str, int] = {}
        """Message id → times it came (more than once: a repeat the device drops by id)."""
        self.misrouted: list[str] = []
        """Topics of messages meant for another device (never allowed)."""
        self.sessions = 0
        """Connections that got their SUBACK."""
        self.connected_port: int | None = None
        self.conn: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        inbox = f"mqttpush/{fleet.app_key}/d/{creds.device_id}/m/"
        self._inbox = inbox.encode()
        self._filters = [inbox + "+", f"mqttpush/{fleet.app_key}/b/+"]
        self._receipts = f"mqttpush/{fleet.app_key}/d/{creds.device_id}/r".encode()

    @property
    def online(self) -> bool:
        return self.conn is not None and self.conn.is_open

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.creds.device_id)

    async def stop(self) -> None:
        self._stopping = True
        if self.conn is not None:
            self.conn.abort()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff = 0.05
        while not self._stopping:
            port = self.port
            try:
                conn = await open_connection(
                    HOST,
                    port,
                    self.creds.device_id,
                    self.creds.device_id,
                    self.creds.token,
                    keepalive=600,
                    timeout=10,
                    on_publish=self._on_publish,
                )
                self.conn = conn
                codes = await conn.subscribe(self._filters, qos=1, timeout=10)
                if codes != [1, 1]:
                    raise ConnectRefused(0x80)
            except (OSError, ConnectRefused, TimeoutError) as exc:
                self.fleet.note_error(self, exc)
                if self.conn is not None:
                    self.conn.abort()
                # A device's reconnect backoff (not a wait for an event): 50 ms doubling to 0.5 s.
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
                self.port = self.fleet.lb_port
                continue
            backoff = 0.05
            self.sessions += 1
            self.connected_port = port
            self.fleet.changed()
            await conn.closed
            self.connected_port = None
            self.fleet.changed()
            self.port = self.fleet.lb_port  # once dropped, through the load balancer

    def _on_publish(self, conn: Connection, topic: bytes, payload: bytes, _qos: int, _retain: bool) -> None:
        if not payload:  # an empty retained publish clears a topic: nothing to show
            return
        if not topic.startswith(self._inbox) and b"/b/" not in topic:
            self.misrouted.append(topic.decode())
            return
        msg_id = json.loads(payload)["id"]
        seen = self.received.get(msg_id, 0)
        self.received[msg_id] = seen + 1
        if not seen:
            conn.publish(self._receipts, json.dumps({"id": msg_id, "event": "arrived"}).encode(), qos=1)
        self.fleet.changed()


class Fleet:
    """Many :class:`Device` of one app; :meth:`until` awaits a condition over them."""

    def __init__(
        self, app_key: str, creds: Iterable[Credentials], lb_port: int, port: int | None = None
    ) -> None:
        self.app_key = app_key
        self.lb_port = lb_port
        self.devices = [Device(self, c, port if port is not None else lb_port) for c in creds]
        self.by_id = {d.creds.device_id: d for d in self.devices}
        self.errors: list[str] = []
        self._changed = asyncio.Event()

    def changed(self) -> None:
        self._changed.set()

    def note_error(self, device: Device, exc: BaseException) -> None:
        if len(self.errors) < 50:
            self.errors.append(f"{device.creds.device_id}: {exc!r}")

    async def start(self, timeout: float = 60.0) -> None:
        """Start every device at once; returns once each is subscribed."""
        for device in self.devices:
            device.start()
        await self.until(lambda: all(d.sessions for d in self.devices), timeout, "every device subscribed")

    async def stop(self) -> None:
        await asyncio.gather(*(d.stop() for d in self.devices))

    async def until(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        """Await ``check()`` becoming truthy, re-checked whenever a device changes; AssertionError
        naming ``what`` at the deadline."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            self._changed.clear()
            value = check()
            if value:
                return value
            left = end - loop.time()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))

    def missing(self, sent: dict[str, set[str]]) -> dict[str, set[str]]:
        """Per device id, the message ids of ``sent`` it has not received yet."""
        out = {}
        for device_id, msg_ids in sent.items():
            lacking = msg_ids - self.by_id[device_id].received.keys()
            if lacking:
                out[device_id] = lacking
        return out


@dataclass
class PushStats:
    accepted: int = 0
    retried: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    """Why pushes were sent again: HTTP status or exception name → count."""


class Pusher:
    """Single-device pushes with a ``biz_id`` each, through ``url`` on ``connections`` keep-alive
    connections, each sent again (same ``biz_id``) until it is accepted or ``deadline`` passes."""

    def __init__(self, url: str, app_key: str, app_secret: str, connections: int = 16) -> None:
        self.url, self.app_key, self.app_secret = url, app_key, app_secret
        self.connections = connections
        self.stats = PushStats()
        self.msg_ids: dict[str, str] = {}
        """biz_id → the msg_id of its 202."""
        self.on_accepted: Callable[[int], None] | None = None

    @staticmethod
    def body(biz_id: str, device_id: str) -> dict[str, Any]:
        return {
            "target": {"devices": [device_id]},
            "notification": {"title": biz_id, "body": "b"},
            "policy": {"biz_id": biz_id},
        }

    async def push_all(self, jobs: list[tuple[str, str]], timeout: float) -> dict[str, str]:
        """``jobs`` = [(biz_id, device_id)]; returns biz_id → msg_id, every one accepted."""
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        deadline = time.monotonic() + timeout
        workers = [asyncio.create_task(self._worker(queue, deadline)) for _ in range(self.connections)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
        return self.msg_ids

    async def _worker(self, queue: asyncio.Queue[tuple[str, str]], deadline: float) -> None:
        conn = SignedConnection(self.url, self.app_key, self.app_secret)
        try:
            while not queue.empty():
                biz_id, device_id = queue.get_nowait()
                conn = await self._push(conn, biz_id, device_id, deadline)
        finally:
            conn.close()

    async def _push(
        self, conn: SignedConnection, biz_id: str, device_id: str, deadline: float
    ) -> SignedConnection:
        while True:
            try:
                doc = await asyncio.wait_for(
                    conn.request("POST", "/api/v1/push", self.body(biz_id, device_id)), 30
                )
            except HttpError as exc:
                if exc.status not in RETRY_STATUSES:
                    raise
                why = f"{exc.status} {exc.code}"
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                why = type(exc).__name__
            else:
                self.msg_ids[biz_id] = str(doc["msg_id"])
                self.stats.accepted += 1
                if self.on_accepted is not None:
                    self.on_accepted(self.stats.accepted)
                return conn
            self.stats.retried += 1
            self.stats.statuses[why] = self.stats.statuses.get(why, 0) + 1
            if time.monotonic() > deadline:
                raise AssertionError(f"push {biz_id} not accepted before the deadline (last: {why})")
            conn.close()
            conn = SignedConnection(self.url, self.app_key, self.app_secret)
            # An app server's retry backoff after a failed attempt (not a wait for an event).
            await asyncio.sleep(0.05)
