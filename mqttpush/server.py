"""Composition roots: ``serve`` (everything in one process), ``broker`` and ``bridge`` (split).

- :class:`BrokerNode`: our broker, authenticating against the store, writing presence.
- :class:`BridgeNode`: intake, dispatcher, receipts, tasks, scheduler, MQTT API and the HTTP
  API, over any :class:`~bridge.publisher.Publisher`.
- :class:`EmbeddedServer` = both, the publisher calling the broker in-process.
- :class:`BridgeServer` = a bridge node talking MQTT to a broker elsewhere (ours or mosquitto).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import resource
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from bridge import mosquitto
from bridge.dispatcher import Dispatcher
from bridge.distributor import Distributor
from bridge.intake import Intake, Limits
from bridge.leases import BridgeLease, new_owner
from bridge.mqtt_api import MqttApi
from bridge.publisher import MqttPublisher, Publisher
from bridge.receipts import Receipts
from bridge.scheduler import Scheduler
from bridge.stats import StatsFlusher
from bridge.supervisor import Supervisors
from bridge.tasks import TaskRunner
from bridge.vendors import VendorGateway, make_channel
from bridge.webhooks import WebhookSender
from mqttpush.api.app import create_api
from mqttpush.api.connections import ConnectionLimits, guarded_protocol
from mqttpush.api.context import ApiContext
from mqttpush.api.limits import RateLimiter
from mqttpush.api.metrics import MetricSources
from mqttpush.broker import Authenticator, BrokerLimits, PresenceHook, PushBroker
from mqttpush.broker.counters import BrokerCounters
from mqttpush.clock import Clock, SystemClock
from mqttpush.cluster.link import NatsLink
from mqttpush.cluster.node import ClusterNode
from mqttpush.cluster.pipe import CONFIG, STOP, BridgeEnd, BrokerEnd, frame
from mqttpush.cluster.publisher import NatsPublisher
from mqttpush.cluster.wire import parse_servers
from mqttpush.config import ServerConfig, config_from_json, config_to_json
from mqttpush.errors import MqttPushError, StartupError
from mqttpush.store import Store
from mqttpush.store.accounts import SERVICE_USERNAME
from mqttpush.store.lock import ROLES, DataDirLock
from mqttpush.store.stats import Retention
from mqttpush.topics import (
    API_PUSH_FILTER,
    PRESENCE_FILTER,
    RECEIPT_FILTER,
    AppIdentity,
    DeviceIdentity,
    Identity,
    ServiceIdentity,
    TopicKind,
    parse_topic,
    topic_matches,
)

log = logging.getLogger("mqttpush.server")


def raise_fd_limit() -> int:
    """Lift the soft open-files limit to the hard one (each device is a socket); returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warning("could not raise the open files limit from %d", soft)
    return int(soft)


class BrokerPublisher:
    """In-process publishing into the embedded broker: no socket, no serialization round trip."""

    def __init__(self, broker: PushBroker) -> None:
        self._broker = broker

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        expires_at: float | None = None,
    ) -> None:
        await self._broker.publish(topic, payload, qos=qos, retain=retain, expires_at=expires_at)

    async def clear_retained(self, topic: str) -> None:
        await self._broker.clear_retained(topic)


class _ApiServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The composition root owns SIGINT/SIGTERM and shuts every part down in order.
        yield


class _Presence:
    """Presence changes, written to the store in order on one task."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
        self._retry: tuple[str, bool] | None = None
        """A change the store refused, written first when :meth:`run` is started again."""

    def put(self, device_id: str, online: bool) -> None:
        self._queue.put_nowait((device_id, online))

    async def run(self) -> None:
        while True:
            change, self._retry = self._retry or await self._queue.get(), None
            try:
                await self._store.run(self._store.devices.set_presence, *change)
            except BaseException:
                self._retry = change  # kept, in order, for the supervisor's restart
                raise
            self._queue.task_done()

    async def idle(self) -> None:
        await self._queue.join()

    def backlog(self) -> int:
        return self._queue.qsize() + (self._retry is not None)


def make_broker(
    config: ServerConfig,
    clock: Clock,
    authenticator: Authenticator,
    on_presence: PresenceHook,
) -> PushBroker:
    """The broker of ``config``: its listeners, limits and TLS, message expiry on ``clock``."""
    return PushBroker(
        clock=clock,  # message expiry on the same clock as the bridge
        host=config.host,
        port=config.mqtt_port,
        authenticator=authenticator,
        on_presence=on_presence,
        connect_timeout=config.connect_timeout,
        ws_port=config.ws_port,
        tls=(str(config.tls_cert), str(config.tls_key)) if config.tls_cert and config.tls_key else None,
        mqtts_port=config.mqtts_port,
        wss_port=config.wss_port,
        limits=BrokerLimits(
            max_connections=config.mqtt_max_connections,
            max_connections_per_ip=config.mqtt_max_connections_per_ip,
            login_failures=config.login_failures,
            login_window=config.login_window,
            login_backoff=config.login_backoff,
            login_backoff_max=config.login_backoff_max,
            refusal_log_interval=config.refusal_log_interval,
        ),
    )


def listener_ports(broker: PushBroker) -> dict[str, int]:
    """Bound ports of the optional listeners that are on: ``ws_port``, ``mqtts_port``, ``wss_port``."""
    out = {}
    for name in ("ws", "mqtts", "wss"):
        port = broker.listener_port(name)
        if port is not None:
            out[f"{name}_port"] = port
    return out


async def authenticate(
    store: Store, client_id: str, username: str | None, password: str | None
) -> Identity | None:
    """Who an MQTT CONNECT's login is, checked against the store; None: refused."""
    if not username or password is None:
        return None
    if username == SERVICE_USERNAME:
        ok = await store.run(store.accounts.authenticate_service, username, password)
        return ServiceIdentity(username) if ok else None
    if client_id == username:
        app_key = await store.run(store.devices.authenticate_device, username, password)
        if app_key:
            return DeviceIdentity(app_key, username)
    if await store.run(store.apps.authenticate_app, username, password):
        return AppIdentity(username)
    return None


class BrokerNode:
    """The broker with store-backed authentication and presence (``mqttpush broker``, and inside ``serve``)."""

    def __init__(self, config: ServerConfig, store: Store, clock: Clock | None = None) -> None:
        self.store = store
        self.presence = _Presence(store)
        self.cluster: ClusterNode | None = None
        """In a cluster (``--cluster``): the node's NATS side, told of every device coming and going."""
        self.broker = make_broker(config, clock or SystemClock(), self._authenticate, self._device_presence)
        self.loops = Supervisors()

    @property
    def port(self) -> int:
        return self.broker.port

    def not_ready(self) -> dict[str, str]:
        """For ``GET /readyz`` of the embedded server: loops waiting to be restarted, and
        ``broker`` while one of its MQTT listeners does not accept connections."""
        down = self.broker.not_listening()
        broker = {"broker": f"MQTT listener not listening: {', '.join(down)}"} if down else {}
        return self.loops.down() | broker

    def listener_ports(self) -> dict[str, int]:
        """Bound ports of the optional listeners that are on: ``ws_port``, ``mqtts_port``, ``wss_port``."""
        return listener_ports(self.broker)

    async def _authenticate(
        self, client_id: str, username: str | None, password: str | None
    ) -> Identity | None:
        return await authenticate(self.store, client_id, username, password)

    def _device_presence(self, device: DeviceIdentity, online: bool) -> None:
        self.presence.put(device.device, online)
        if self.cluster is not None:
            if online:
                self.cluster.connected(device)
            else:
                self.cluster.gone(device)

    async def start(self) -> None:
        raise_fd_limit()
        if self.cluster is None:  # other nodes of a cluster hold devices that are online
            await self.store.run(self.store.devices.reset_presence)
        await self.broker.start()
        self.loops.start("presence", self.presence.run)

    async def stop(self) -> None:
        await self.loops.cancel()
        await self.broker.shutdown()


class BridgeNode:
    """Everything but the broker, over a publisher; ``on_message`` takes what devices and apps publish."""

    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        publisher: Publisher,
        clock: Clock,
        mqtt_port: Any,
        *,
        alone: bool = False,
    ) -> None:
        """``alone``: no other bridge can be working over this store (the process holds the SQLite
        data dir's bridge lock), so at start it takes over every other bridge's work at once
        instead of waiting for their leases to lapse."""
        self.config = config
        self.store = store
        self.clock = clock
        self.publisher = publisher
        self.dispatcher = Dispatcher(store, publisher, clock)
        self.receipts = Receipts(store, publisher)
        self.owner = new_owner()
        """This bridge's id on the leases of its work (bridge/leases.py)."""
        self.alone = alone
        self.tasks = TaskRunner(store, self.dispatcher, clock, owner=self.owner, lease=config.lease_seconds)
        limits = Limits(config.max_envelope_bytes, config.default_ttl, config.max_ttl, config.max_publish_lag)
        self.intake = Intake(store, self.dispatcher, self.tasks, clock, limits)
        self.scheduler = Scheduler(
            store,
            publisher,
            self.dispatcher,
            self.intake,
            clock,
            config.expiry_interval,
            owner=self.owner,
            lease=config.lease_seconds,
        )
        self.lease = BridgeLease(
            store, clock, self.owner, config.lease_seconds, self._take_over, self.tasks.resume
        )
        self.stats = (
            StatsFlusher(
                store,
                config.stats_flush_interval,
                Retention(config.stats_minute_days, config.stats_hour_days, config.stats_day_days),
            )
            if config.stats
            else None
        )
        self.dispatcher.on_hold = self.scheduler.wake
        self.vendors = VendorGateway(store, clock, make_channel)
        self.dispatcher.gateway = self.vendors
        self.intake.on_scheduled = self.scheduler.wake
        self.mqtt_api = MqttApi(store, self.intake, publisher)
        self.webhooks = WebhookSender(store, clock, sender=self.owner)
        self.presence = _Presence(store)
        self.mosquitto = (
            mosquitto.MosquittoSync(store, config.mosquitto_dir, config.mosquitto_pid_file)
            if config.mosquitto_dir is not None
            else None
        )
        self._mqtt_port = mqtt_port
        self.loops = Supervisors()
        """Every long-running loop of the bridge, restarted after a failure (``GET /readyz``)."""
        self.metrics = MetricSources(
            self.dispatcher,
            self.tasks,
            self.receipts,
            self.vendors,
            webhooks=self.webhooks,
            token=config.metrics_token,
        )
        """What ``GET /metrics`` reads; the embedded server adds its broker's counters."""
        self.metrics.queues["presence"] = self.presence.backlog
        self.extra_loops: Callable[[], dict[str, str]] = lambda: {}
        """Loops of other parts in the same process (the embedded broker's presence writer)."""
        self._http: _ApiServer | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._http_socket: socket.socket | None = None

    @property
    def http_port(self) -> int:
        assert self._http_socket is not None
        return int(self._http_socket.getsockname()[1])

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.http_port}"

    def on_message(self, topic: str, payload: bytes) -> None:
        """A message a device or app published (receipt, presence, push request)."""
        if topic_matches(topic, RECEIPT_FILTER):
            self.receipts.feed(topic, payload)
        elif topic_matches(topic, API_PUSH_FILTER):
            self.mqtt_api.feed(topic, payload)
        elif topic_matches(topic, PRESENCE_FILTER) and payload in (b"online", b"offline"):
            parsed = parse_topic(topic)
            if parsed is not None and parsed.kind is TopicKind.PRESENCE and parsed.device is not None:
                self.presence.put(parsed.device, payload == b"online")

    async def take_uplink(self, items: list[tuple[str, bytes]]) -> None:
        """Client publishes a broker node of a cluster sent up: handled as :meth:`on_message`;
        returns once the receipts among them are stored. Raises TimeoutError if that takes more
        than 4 s (the store is down): the node, unanswered, sends them again."""
        for topic, payload in items:
            self.on_message(topic, payload)
        await asyncio.wait_for(self.receipts.wait_handled(self.receipts.fed), 4.0)

    def not_ready(self) -> dict[str, str]:
        """Loops of this process waiting to be restarted (name -> cause), for ``GET /readyz``."""
        return self.loops.down() | self.extra_loops()

    def _mqtt_url(self, request_host: str) -> str:
        return self.config.public_mqtt_url or f"mqtt://{request_host}:{self._mqtt_port()}"

    async def _take_over(self, owners: list[str]) -> None:
        """Bridges whose lease lapsed died: re-handle what the store still calls pending (what
        they had accepted, released, or were retrying with a vendor); their tasks are claimed by
        the lease loop's next call of ``tasks.resume``; their webhooks go to whoever sends next."""
        await self.store.run(self.store.webhooks.release_senders, owners)
        await self.dispatcher.recover()

    async def start(self) -> None:
        if self.stats is not None:
            await self.stats.start()  # counts from the first transition on
        await self.lease.start(alone=self.alone)
        if self.alone:  # a restart after kill -9: this bridge sends what it held at once
            await self.store.run(self.store.webhooks.release_senders)
        await self.dispatcher.recover()
        await self.tasks.resume(alone=self.alone)
        clock_sleep = self.clock.sleep  # backoff on the loop's own clock where it has one
        self.loops.start("leases", self.lease.run, clock_sleep)
        if self.stats is not None:
            self.loops.start("stats", self.stats.run)
        self.loops.start("dispatcher", self.dispatcher.run, clock_sleep)
        self.loops.start("receipts", self.receipts.run)
        self.loops.start("scheduler", self.scheduler.run, clock_sleep)
        self.loops.start("tasks", self.tasks.run, clock_sleep)
        self.loops.start("mqtt_api", self.mqtt_api.run)
        self.loops.start("webhooks", self.webhooks.run, clock_sleep)
        self.loops.start("presence", self.presence.run)
        self.loops.start("loop_lag", self.metrics.loop_lag.run)
        if self.mosquitto is not None:
            self.loops.start("mosquitto", self.mosquitto.run)
        on_register = self.mosquitto.changed if self.mosquitto is not None else None
        api = create_api(
            ApiContext(
                self.store,
                self.intake,
                self.tasks,
                self.clock,
                self._mqtt_url,
                on_register,
                self.publisher,
                self.not_ready,
                RateLimiter.of(self.config.api_rate, self.config.api_burst, time.monotonic),
                RateLimiter.of(self.config.ip_rate, self.config.ip_burst, time.monotonic),
                metrics=self.metrics,
                distributor=Distributor(
                    self.store, self.dispatcher, self.publisher, self.clock, self.config.max_publish_lag
                ),
                endpoint_limiter=RateLimiter.of(
                    self.config.push_rate, self.config.push_burst, time.monotonic
                ),
                public_url=self.config.public_url,
            )
        )
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on accepted sockets whose proto says
        # TCP, and with proto 0 every keep-alive response waited out Nagle + delayed ACK (~40 ms).
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.config.host, self.config.http_port))
        self._http_socket = sock
        self._http = _ApiServer(
            uvicorn.Config(
                api,
                log_level="warning",
                access_log=False,
                lifespan="off",
                loop="none",
                http=guarded_protocol(
                    ConnectionLimits(
                        self.config.http_header_timeout,
                        self.config.http_max_connections,
                        self.config.http_max_header_bytes,
                    )
                ),
                timeout_keep_alive=self.config.http_keepalive_timeout,
            )
        )
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop taking requests, finish publishing what was accepted, then stop the rest."""
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._http_task), 5)
            self._http_task.cancel()
            await asyncio.gather(self._http_task, return_exceptions=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.dispatcher.drained(), 5)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.vendors.drained(), 5)
        await self.loops.cancel()
        await self.vendors.close()
        await self.webhooks.close()
        if self.stats is not None:
            await self.stats.close()
        try:
            await self.lease.stop()
            await self.store.run(self.store.webhooks.release_senders, [self.owner])
        except MqttPushError as exc:  # the store is down: the lease lapses by itself
            log.warning("could not hand the lease over: %s", exc.message)
        if self._http_socket is not None:
            self._http_socket.close()


class _Serving:
    """What ``serve``'s two shapes share: the bridge node and its HTTP API."""

    bridge: BridgeNode

    @property
    def http_port(self) -> int:
        return self.bridge.http_port

    @property
    def http_url(self) -> str:
        return self.bridge.http_url


class EmbeddedServer(_Serving):
    """Everything in one process. ``async with EmbeddedServer(cfg) as s:`` then ``s.mqtt_port``, ``s.http_port``."""

    def __init__(self, config: ServerConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.lock = DataDirLock(config.data_dir, ROLES)
        self.store = _open_store(config, self.lock, self.clock, mosquitto.password_hash)
        self.broker_node = BrokerNode(config, self.store, self.clock)
        self.broker = self.broker_node.broker
        self.bridge = BridgeNode(
            config,
            self.store,
            BrokerPublisher(self.broker),
            self.clock,
            lambda: self.broker.port,
            alone=True,  # it holds the data dir's bridge lock
        )
        self.dispatcher, self.receipts, self.tasks = (
            self.bridge.dispatcher,
            self.bridge.receipts,
            self.bridge.tasks,
        )
        self.intake, self.mqtt_api = self.bridge.intake, self.bridge.mqtt_api
        self.bridge.extra_loops = self.broker_node.not_ready
        self.bridge.metrics.broker = self.broker.counters
        self.bridge.metrics.queues["presence"] = self.broker_node.presence.backlog

    @property
    def mqtt_port(self) -> int:
        return self.broker.port

    def listener_ports(self) -> dict[str, int]:
        """Bound ports of the optional listeners that are on: ``ws_port``, ``mqtts_port``, ``wss_port``."""
        return self.broker_node.listener_ports()

    async def presence_idle(self) -> None:
        """Wait until every presence change seen so far is in the store."""
        await self.broker_node.presence.idle()

    async def start(self) -> None:
        await self.broker_node.start()
        for topic_filter in (RECEIPT_FILTER, API_PUSH_FILTER):
            self.broker.tap(topic_filter, lambda topic, payload, _who: self.bridge.on_message(topic, payload))
        await self.bridge.start()
        log.info("started mqtt=%s:%d http=%s", self.config.host, self.mqtt_port, self.http_url)

    async def stop(self) -> None:
        await self.bridge.stop()
        await self.broker_node.stop()
        self.store.close()
        self.lock.release()
        log.info("stopped")

    async def __aenter__(self) -> EmbeddedServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


_REPORTED_COUNTERS = tuple(name for name in BrokerCounters.__slots__ if name != "transports")
"""The broker counters its process reports to ``serve``'s (``transports`` is a constant)."""


def broker_process_wanted(config: ServerConfig) -> bool:
    """Whether ``serve`` runs its broker in a process of its own (``--broker-process``; by default
    when the machine has more than one core)."""
    if config.broker_process is not None:
        return config.broker_process
    return (os.cpu_count() or 1) > 1


class DualProcessServer(_Serving):
    """``mqttpush serve`` on two cores: the HTTP API, bridge and store in this process, the MQTT
    broker in a child process (``python -m mqttpush.cli.broker_process``) linked to it by a socket
    pair (mqttpush.cluster.pipe). One command and the guarantees of :class:`EmbeddedServer`:

    * a 202 still means committed; a publish counts as published once written to the broker
      process (up to ``BridgeEnd.window`` ahead of what it has handled; beyond, once handled),
      and whatever it did not hand to a session before dying is sent again (below);
    * the child checks every MQTT login against this process's store, and tells it of presence,
      receipts and MQTT API pushes;
    * a child that dies (even ``kill -9``) is started again on the same ports: devices reconnect,
      publishes it left unanswered go to the new one, and everything pending is re-published
      from the store (its retained inbox died with it);
    * this process dying closes the pair, and the child exits at once.
    """

    ready_timeout = 30.0
    """Seconds a broker process may take to start listening."""

    def __init__(self, config: ServerConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.lock = DataDirLock(config.data_dir, ROLES)
        self.store = _open_store(config, self.lock, self.clock, mosquitto.password_hash)
        self.presence = _Presence(self.store)
        self.counts = BrokerCounters()
        """The broker process's counters as of its last report (a second old at most)."""
        self.link = BridgeEnd(self._client_publish, self.presence.put, self._authenticate, self._report)
        self.bridge = BridgeNode(
            config, self.store, self.link, self.clock, lambda: self.mqtt_port, alone=True
        )
        self.dispatcher, self.receipts = self.bridge.dispatcher, self.bridge.receipts
        self.bridge.extra_loops = self._not_ready
        self.bridge.metrics.broker = self.counts
        self.bridge.metrics.queues["presence"] = self.presence.backlog
        self.loops = Supervisors()
        self._proc: asyncio.subprocess.Process | None = None
        self._ports: dict[str, int] = {}
        self._not_listening: list[str] = []
        self._down: str | None = None
        self._stopping = False
        self.restarts = 0
        """Broker processes started again after one died."""
        self.restarted = asyncio.Event()
        """Set each time a broker process that died has been replaced and the store re-published."""
        self.reported = asyncio.Event()
        """Set by each report of the broker process (its counters, every second)."""

    @property
    def mqtt_port(self) -> int:
        return self._ports["port"]

    @property
    def broker_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def listener_ports(self) -> dict[str, int]:
        """Bound ports of the optional listeners that are on: ``ws_port``, ``mqtts_port``, ``wss_port``."""
        return {name: port for name, port in self._ports.items() if name != "port"}

    async def presence_idle(self) -> None:
        """Wait until every presence change heard so far is in the store."""
        await self.presence.idle()

    def _client_publish(self, topic: str, payload: bytes) -> None:
        self.bridge.on_message(topic, payload)

    async def _authenticate(
        self, client_id: str, username: str | None, password: str | None
    ) -> Identity | None:
        return await authenticate(self.store, client_id, username, password)

    def _report(self, status: dict[str, Any]) -> None:
        for name, value in status.get("counters", {}).items():
            if name in _REPORTED_COUNTERS:
                setattr(self.counts, name, value)
        self._not_listening = list(status.get("not_listening", []))
        self.reported.set()

    def _not_ready(self) -> dict[str, str]:
        if self._down is not None:
            return self.loops.down() | {"broker": self._down}
        down = {"broker": f"MQTT listener not listening: {', '.join(self._not_listening)}"}
        return self.loops.down() | (down if self._not_listening else {})

    async def _spawn(self) -> None:
        """Start a broker process with this config (on the ports the first one bound) and wait
        until it listens; StartupError with its reason if it cannot."""
        config = dataclasses.replace(
            self.config,
            mqtt_port=self._ports.get("port", self.config.mqtt_port),
            ws_port=self._ports.get("ws_port", self.config.ws_port),
            mqtts_port=self._ports.get("mqtts_port", self.config.mqtts_port),
            wss_port=self._ports.get("wss_port", self.config.wss_port),
        )
        ours, theirs = socket.socketpair()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "mqttpush.cli.broker_process",
                str(theirs.fileno()),
                config.log_level,
                config.log_format,
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        await asyncio.get_running_loop().connect_accepted_socket(lambda: self.link, ours)
        self.link.send(frame(CONFIG, config_to_json(config).encode()))
        try:
            self._ports = await asyncio.wait_for(asyncio.shield(self.link.ready), self.ready_timeout)
        except BaseException as exc:
            await self._end_process()
            if isinstance(exc, TimeoutError):
                raise StartupError(
                    f"the broker process did not listen within {self.ready_timeout:g}s"
                ) from None
            raise

    async def _end_process(self, timeout: float = 10.0) -> None:
        """Ask the broker process to stop (its devices are disconnected), then wait for it."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            self.link.send(frame(STOP))
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                log.warning("the broker process did not stop within %gs; killed", timeout)
                proc.kill()
                await proc.wait()
        self.link.close()

    async def _watch(self) -> None:
        """Start the broker process again whenever it dies (the supervisor backs off if it cannot)."""
        while True:
            await self.link.closed
            if self._stopping:  # stop() ended it: wait to be cancelled with the other loops
                await asyncio.Event().wait()
            proc = self._proc
            code = await proc.wait() if proc is not None else None
            self._down = f"the broker process exited (code {code}); starting another"
            log.error("%s", self._down)
            # Its devices are all disconnected, and it could not say so.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.presence.idle(), 5)
            await self.store.run(self.store.devices.reset_presence)
            await self._spawn()
            self.restarts += 1
            self._down = None
            log.info("broker process started again mqtt=%s:%d", self.config.host, self.mqtt_port)
            # Its retained inbox died with it: everything not yet arrived is published again.
            await self.dispatcher.recover()
            self.restarted.set()

    async def start(self) -> None:
        raise_fd_limit()
        await self.store.run(self.store.devices.reset_presence)
        self.loops.start("presence", self.presence.run)
        try:
            await self._spawn()
            await self.bridge.start()
        except BaseException:
            await self._end_process()
            await self.loops.cancel()
            raise
        self.loops.start("broker_process", self._watch, self.clock.sleep)
        log.info(
            "started mqtt=%s:%d http=%s (broker in process %s)",
            self.config.host,
            self.mqtt_port,
            self.http_url,
            self.broker_pid,
        )

    async def stop(self) -> None:
        await self.bridge.stop()  # publishes what it accepted: the broker process is still there
        self._stopping = True
        await self._end_process()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.presence.idle(), 5)
        await self.loops.cancel()
        self.store.close()
        self.lock.release()
        log.info("stopped")

    async def __aenter__(self) -> DualProcessServer:
        try:
            await self.start()
        except BaseException:
            self.store.close()
            self.lock.release()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def run_broker_process(fd: int) -> None:
    """The broker process of :class:`DualProcessServer`, on the socket ``fd`` of its pair: the
    broker of the config the parent sends, until the parent says stop or goes away."""
    loop = asyncio.get_running_loop()
    end = BrokerEnd()
    await loop.connect_accepted_socket(lambda: end, socket.socket(fileno=fd))
    try:
        config = config_from_json((await asyncio.wait_for(end.config, 30)).decode())
    except (TimeoutError, asyncio.CancelledError):
        return
    broker = make_broker(config, SystemClock(), end.authenticate, end.presence)
    end.publish, end.clear = broker.publish_now, broker.discard_retained
    for topic_filter in (RECEIPT_FILTER, API_PUSH_FILTER):
        broker.tap(topic_filter, end.up)
    raise_fd_limit()
    try:
        await broker.start()
    except (MqttPushError, OSError) as exc:
        end.failed(exc.message if isinstance(exc, MqttPushError) else str(exc))
        end.close()
        return
    end.ready({"port": broker.port, **listener_ports(broker)})
    reports = loop.create_task(_report_status(end, broker))
    await end.stop.wait()
    reports.cancel()
    await broker.shutdown()
    end.close()


async def _report_status(end: BrokerEnd, broker: PushBroker, every: float = 1.0) -> None:
    counters = broker.counters
    while True:
        end.report(
            {
                "counters": {name: getattr(counters, name) for name in _REPORTED_COUNTERS},
                "not_listening": broker.not_listening(),
            }
        )
        await asyncio.sleep(every)


class BrokerServer:
    """``mqttpush broker``: the broker alone, for a bridge running elsewhere; with ``--cluster``,
    one broker node of a cluster linked by NATS (mqttpush.cluster, docs/scale-out.md)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.lock = DataDirLock(config.data_dir, *broker_locks(config))
        self.store = _open_store(config, self.lock)
        self.node = BrokerNode(config, self.store)
        self.link: NatsLink | None = None
        if config.cluster is not None:
            node_id = config.node_id or socket.gethostname()
            self.link = NatsLink(parse_servers(config.cluster), f"mqttpush-broker-{node_id}")
            self.node.cluster = ClusterNode(self.link, self.node.broker, self.store, node_id)

    @property
    def mqtt_port(self) -> int:
        return self.node.port

    async def __aenter__(self) -> BrokerServer:
        if self.link is not None and self.node.cluster is not None:
            await self.link.start()
            await self.node.cluster.start()  # hooked in before the first device connects
        await self.node.start()
        log.info("broker started mqtt=%s:%d", self.config.host, self.mqtt_port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.node.stop()
        if self.link is not None and self.node.cluster is not None:
            await self.node.cluster.stop()
            await self.link.close()
        self.store.close()
        self.lock.release()


def _open_store(
    config: ServerConfig,
    lock: DataDirLock,
    clock: Clock | None = None,
    broker_hasher: Callable[[str], str] | None = None,
) -> Store:
    """The store of ``config`` (``--store``, or SQLite in the data dir), opened under the data dir's
    ``lock``, which is released when opening fails (the refusal is the start-up error)."""
    try:
        return Store(config.data_dir, clock, broker_hasher=broker_hasher, url=config.store)
    except BaseException:
        lock.release()
        raise


def broker_locks(config: ServerConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(exclusive, shared)`` data dir locks of ``mqttpush broker``: the broker role alone, or in a
    cluster the role shared among nodes and the node's own id (docs/operations.md)."""
    if config.cluster is None:
        return ("broker",), ()
    return (f"broker-{config.node_id or socket.gethostname()}",), ("broker",)


def bridge_locks(config: ServerConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(exclusive, shared)`` data dir locks of ``mqttpush bridge``: one bridge, or any number of
    cluster bridges (leases share their work, docs/scale-out.md)."""
    return ((), ("bridge",)) if config.cluster is not None else (("bridge",), ())


class BridgeServer:
    """``mqttpush bridge --broker mqtt://H:P``: bridge, API and scheduler against any MQTT 3.1.1 broker;
    with ``--cluster nats://…`` instead, one bridge of a cluster, publishing through broker nodes
    linked by NATS (mqttpush.cluster, docs/scale-out.md)."""

    def __init__(self, config: ServerConfig, clock: Clock | None = None) -> None:
        assert config.broker_url is not None or config.cluster is not None
        self.config = config
        self.clock = clock or SystemClock()
        self.lock = DataDirLock(config.data_dir, *bridge_locks(config))
        self.store = _open_store(config, self.lock, self.clock, mosquitto.password_hash)
        self.publisher: MqttPublisher | NatsPublisher
        if config.cluster is not None:
            link = NatsLink(parse_servers(config.cluster), f"mqttpush-bridge-{os.getpid()}")
            self.publisher = NatsPublisher(link)
            mqtt_port: Callable[[], int] = lambda: config.mqtt_port  # noqa: E731 (no broker of its own)
        else:
            assert config.broker_url is not None
            username, password = self.store.accounts.service_credentials()
            mqtt = self.publisher = MqttPublisher(
                config.broker_url,
                username,
                password,
                subscriptions=(RECEIPT_FILTER, PRESENCE_FILTER, API_PUSH_FILTER),
            )
            mqtt_port = lambda: mqtt.port  # noqa: E731
        self.bridge = BridgeNode(config, self.store, self.publisher, self.clock, mqtt_port)

    @property
    def http_url(self) -> str:
        return self.bridge.http_url

    @property
    def http_port(self) -> int:
        return self.bridge.http_port

    async def __aenter__(self) -> BridgeServer:
        if self.bridge.mosquitto is not None:
            await self.bridge.mosquitto.sync()  # the service account must exist before we log in
        if isinstance(self.publisher, NatsPublisher):
            await self.publisher.start(self.bridge.take_uplink)
        else:
            # A broker that comes back without our session lost its retained messages (docs/split.md):
            # re-publish from the store as at start, which the first connect leaves to bridge.start().
            await self.publisher.start(self.bridge.on_message, on_session_lost=self.bridge.dispatcher.recover)
        await self.bridge.start()
        log.info(
            "bridge started broker=%s http=%s", self.config.broker_url or self.config.cluster, self.http_url
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.bridge.stop()
        await self.publisher.stop()
        self.store.close()
        self.lock.release()
