"""``GET /metrics``: the server's counters in Prometheus' text format (docs/operations.md, "Metrics").

Nothing here runs per message. The broker, the store thread, the dispatcher and the vendor gateway
keep plain numbers (``mqttpush.telemetry``, ``mqttpush.broker.counters``, ``bridge.vendors``); a
:class:`Collector` reads them when Prometheus scrapes. Each API instance has its own
``CollectorRegistry`` (not the library's global one), so several servers in one process (tests,
benchmarks) each report their own numbers. What is counted per event here (HTTP requests, delivery
transitions, event-loop lag samples) is counted in plain ints too.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mqttpush import __version__
from mqttpush.errors import AuthError
from mqttpush.telemetry import Histogram

if TYPE_CHECKING:
    from bridge.dispatcher import Dispatcher
    from bridge.receipts import Receipts
    from bridge.tasks import TaskRunner
    from bridge.vendors import VendorGateway
    from bridge.webhooks import WebhookSender
    from mqttpush.api.context import ApiContext
    from mqttpush.api.guard import Guard
    from mqttpush.store import Store
    from mqttpush.store.core import Event
    from mqttpush.store.tx import Connection

VENDORS = frozenset({"apns", "fcm", "hms", "mipush", "webpush"})
LOOP_LAG_INTERVAL = 0.5
"""Seconds between two event-loop lag samples."""


class BrokerCounts(Protocol):
    """The embedded broker's plain counters (``mqttpush.broker.counters.BrokerCounters``), seen
    without importing the broker."""

    transports: dict[str, str]
    """Listener name -> transport (``tcp``, ``tls``, ``ws``, ``wss``): the keys of the next three."""
    sockets: dict[str, int]
    connected: dict[str, int]
    connects: dict[str, int]
    refused: dict[str, int]
    messages_in: dict[str, int]
    messages_out: dict[str, int]


class LoopLag:
    """Event-loop lag: how late a timer set for :data:`LOOP_LAG_INTERVAL` fires. A loop blocked by
    a slow callback shows here before it shows anywhere else. Run :meth:`run` as a task."""

    def __init__(self, interval: float = LOOP_LAG_INTERVAL) -> None:
        self.interval = interval
        self.seconds = Histogram()
        self.last = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            await asyncio.sleep(self.interval)
            self.last = max(0.0, loop.time() - began - self.interval)
            self.seconds.observe(self.last)


@dataclass
class MetricSources:
    """What the composition root hands ``GET /metrics``; every part is read at scrape time."""

    dispatcher: Dispatcher | None = None
    tasks: TaskRunner | None = None
    receipts: Receipts | None = None
    vendors: VendorGateway | None = None
    broker: BrokerCounts | None = None
    """None when the broker runs in another process (``mqttpush bridge``)."""
    webhooks: WebhookSender | None = None
    loop_lag: LoopLag = field(default_factory=LoopLag)
    queues: dict[str, Callable[[], int]] = field(default_factory=dict)
    """More queue depths by name (the presence writer's)."""
    token: str | None = None
    """When set, ``/metrics`` wants ``Authorization: Bearer <token>``."""


class DeliveryCounts:
    """Delivery transitions by (state, channel), counted by a store transition listener on the
    store thread. The channel is the vendor a ``forwarded`` or vendor ``failed`` row names,
    ``mqtt`` for ``published``, ``none`` for states no channel caused."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def __call__(self, conn: Connection, rows: list[Event]) -> None:
        counts = self.counts
        for _msg_id, _device_id, state, _at, detail in rows:
            if state == "published":
                channel = "mqtt"
            elif detail is not None and (vendor := detail.split(":", 1)[0]) in VENDORS:
                channel = vendor
            else:
                channel = "none"
            key = (state, channel)
            counts[key] = counts.get(key, 0) + 1


class HttpCounts:
    """Requests by (method, route template, status class) and their latency per (method, route)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        self.seconds: dict[tuple[str, str], Histogram] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, f"{status // 100}xx")
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.seconds.get((method, route))
        if histogram is None:
            histogram = self.seconds[(method, route)] = Histogram()
        histogram.observe(seconds)


class _HttpMiddleware:
    """Pure ASGI (no per-request task, unlike ``BaseHTTPMiddleware``): times each request and
    labels it by the route's template (``/api/v1/messages/{msg_id}``), never the raw path, so
    scanners cannot blow up the label space; a path no route matched is ``unmatched``."""

    def __init__(self, app: ASGIApp, counts: HttpCounts) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.counts.observe(scope["method"], route, status, time.perf_counter() - started)


def counted(app: ASGIApp, counts: HttpCounts) -> ASGIApp:
    """``app`` with its requests counted as the middleware counts every route's (the hot path,
    ``mqttpush.api.hotpath``, answers in front of the middleware stack)."""
    return _HttpMiddleware(app, counts)


def _histogram(name: str, doc: str, labels: list[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=labels)


def _add(family: HistogramMetricFamily, labels: list[str], h: Histogram) -> None:
    buckets = [("+Inf" if b == float("inf") else repr(float(b)), float(n)) for b, n in h.cumulative()]
    family.add_metric(labels, buckets, h.sum)


class _Collector(Collector):
    def __init__(
        self, store: Store, sources: MetricSources, http: HttpCounts, deliveries: DeliveryCounts
    ) -> None:
        self.store = store
        self.sources = sources
        self.http = http
        self.deliveries = deliveries

    def collect(self) -> Iterator[Metric]:
        yield from self._info()
        yield from self._broker()
        yield from self._deliveries()
        yield from self._vendors()
        yield from self._queues()
        yield from self._webhooks()
        yield from self._store()
        yield from self._loop()
        yield from self._http()

    def _info(self) -> Iterable[Metric]:
        info = GaugeMetricFamily("mqttpush_build_info", "The running mqttpush version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

    def _broker(self) -> Iterable[Metric]:
        counts = self.sources.broker
        if counts is None:
            return
        conns = GaugeMetricFamily(
            "mqttpush_mqtt_connections",
            "Open MQTT connections by transport and state (connecting: before CONNACK).",
            labels=["transport", "state"],
        )
        connects = CounterMetricFamily(
            "mqttpush_mqtt_connects", "MQTT connections accepted (CONNACK 0).", labels=["transport"]
        )
        for listener, transport in counts.transports.items():
            connected = counts.connected.get(listener, 0)
            conns.add_metric([transport, "connected"], connected)
            conns.add_metric([transport, "connecting"], max(0, counts.sockets.get(listener, 0) - connected))
            connects.add_metric([transport], counts.connects.get(listener, 0))
        refused = CounterMetricFamily(
            "mqttpush_mqtt_refused", "MQTT connections refused, by reason.", labels=["reason"]
        )
        for reason, n in sorted(counts.refused.items()):
            refused.add_metric([reason.replace(" ", "_")], n)
        received = CounterMetricFamily(
            "mqttpush_mqtt_messages_in",
            "PUBLISHes from MQTT clients that the ACL let through, by topic class.",
            labels=["topic_class"],
        )
        sent = CounterMetricFamily(
            "mqttpush_mqtt_messages_out",
            "PUBLISHes handed to subscribers (sent, or queued for an offline session), by topic class.",
            labels=["topic_class"],
        )
        for family, by_class in ((received, counts.messages_in), (sent, counts.messages_out)):
            for topic_class, n in by_class.items():
                family.add_metric([topic_class], n)
        yield from (conns, connects, refused, received, sent)

    def _deliveries(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "mqttpush_delivery_transitions",
            "Delivery state changes stored, by new state and channel.",
            labels=["state", "channel"],
        )
        for (state, channel), n in sorted(dict(self.deliveries.counts).items()):
            family.add_metric([state, channel], n)
        yield family

    def _vendors(self) -> Iterable[Metric]:
        gateway = self.sources.vendors
        requests = CounterMetricFamily(
            "mqttpush_vendor_requests", "Vendor sends by vendor and outcome.", labels=["vendor", "outcome"]
        )
        seconds = _histogram("mqttpush_vendor_request_seconds", "Vendor send latency.", ["vendor"])
        waiting = GaugeMetricFamily(
            "mqttpush_vendor_queue_depth",
            "Forwards submitted to a vendor and not finished (sending or waiting to retry).",
            labels=["vendor"],
        )
        if gateway is not None:
            stats = gateway.stats
            for (vendor, outcome), n in sorted(dict(stats.requests).items()):
                requests.add_metric([vendor, outcome], n)
            for vendor, h in sorted(dict(stats.seconds).items()):
                _add(seconds, [vendor], h)
            for vendor, n in sorted(dict(stats.waiting).items()):
                waiting.add_metric([vendor], n)
        yield from (requests, seconds, waiting)

    def _queues(self) -> Iterable[Metric]:
        s = self.sources
        depth = GaugeMetricFamily(
            "mqttpush_queue_depth", "Work waiting in the server's queues.", labels=["queue"]
        )
        parts: dict[str, Callable[[], int]] = {}
        if s.dispatcher is not None:
            parts["dispatcher"] = s.dispatcher.backlog
        if s.tasks is not None:
            parts["tasks"] = s.tasks.queued
        if s.receipts is not None:
            parts["receipts"] = s.receipts.backlog
        parts |= s.queues
        for name, read in parts.items():
            depth.add_metric([name], read())
        yield depth
        if s.dispatcher is not None:
            yield GaugeMetricFamily(
                "mqttpush_publish_lag_seconds",
                "How long the oldest accepted push has waited to be published (0: none waits).",
                value=s.dispatcher.lag(),
            )

    def _webhooks(self) -> Iterable[Metric]:
        sender = self.sources.webhooks
        posts = CounterMetricFamily("mqttpush_webhook_posts", "Webhook POSTs made (batches of events).")
        backing_off = GaugeMetricFamily(
            "mqttpush_webhooks_backing_off", "Webhooks whose last POST failed, waiting to retry."
        )
        if sender is not None:
            posts.add_metric([], sender.posts)
            backing_off.add_metric([], len(sender.retry_at))
        yield from (posts, backing_off)

    def _store(self) -> Iterable[Metric]:
        stats = self.store.commit_stats
        batch = _histogram(
            "mqttpush_store_commit_batch_size", "Store calls per group commit (one transaction).", []
        )
        _add(batch, [], stats.batch_sizes)
        seconds = _histogram(
            "mqttpush_store_commit_seconds",
            "Time the store thread spent per group: the calls and the COMMIT.",
            [],
        )
        _add(seconds, [], stats.seconds)
        yield from (batch, seconds)

    def _loop(self) -> Iterable[Metric]:
        lag = self.sources.loop_lag
        family = _histogram(
            "mqttpush_event_loop_lag_seconds",
            "How late the event loop ran a timer (sampled twice a second).",
            [],
        )
        _add(family, [], lag.seconds)
        yield family

    def _http(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "mqttpush_http_requests",
            "HTTP requests by method, route template and status class.",
            labels=["method", "route", "status"],
        )
        for (method, route, status), n in sorted(dict(self.http.requests).items()):
            requests.add_metric([method, route, status], n)
        seconds = _histogram(
            "mqttpush_http_request_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
        )
        for (method, route), h in sorted(dict(self.http.seconds).items()):
            _add(seconds, [method, route], h)
        yield from (requests, seconds)


def install(api: FastAPI, ctx: ApiContext, guard: Guard) -> HttpCounts:
    """Add ``GET /metrics`` and the HTTP request counting to ``api``; returns the counts (the hot
    path counts its answers there too)."""
    sources = ctx.metrics or MetricSources()
    registry = CollectorRegistry(auto_describe=False)
    http = HttpCounts()
    deliveries = DeliveryCounts()
    ctx.store.transition_listeners.append(deliveries)
    registry.register(_Collector(ctx.store, sources, http, deliveries))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    api.add_middleware(_HttpMiddleware, counts=http)
    expected = f"Bearer {sources.token}".encode() if sources.token else None

    @api.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus text format; open unless a metrics token is set (docs/operations.md)."""
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                raise AuthError(
                    "GET /metrics needs Authorization: Bearer <metrics token>", code="bad_metrics_token"
                )
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return http
