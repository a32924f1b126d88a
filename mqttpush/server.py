"""Composition root of ``mqttpush serve``: store, broker, bridge and HTTP API in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from bridge.dispatcher import Dispatcher
from bridge.intake import Intake, Limits
from bridge.publisher import BrokerPublisher
from bridge.receipts import Receipts
from bridge.scheduler import Scheduler
from mqttpush.api.app import ApiContext, create_api
from mqttpush.broker import PushBroker
from mqttpush.clock import Clock, SystemClock
from mqttpush.config import ServerConfig
from mqttpush.store import Store
from mqttpush.store.store import SERVICE_USERNAME
from mqttpush.topics import RECEIPT_FILTER, DeviceIdentity, Identity, ServiceIdentity

log = logging.getLogger("mqttpush.server")


class _ApiServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The composition root owns SIGINT/SIGTERM and shuts every part down in order.
        yield


class EmbeddedServer:
    """Everything in one process. ``async with EmbeddedServer(cfg) as s:`` then ``s.mqtt_port``, ``s.http_port``."""

    def __init__(self, config: ServerConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.store = Store(config.data_dir, self.clock)
        self.broker = PushBroker(
            host=config.host,
            port=config.mqtt_port,
            authenticator=self._authenticate,
            on_presence=self._on_presence,
            connect_timeout=config.connect_timeout,
        )
        publisher = BrokerPublisher(self.broker)
        self.dispatcher = Dispatcher(self.store, publisher)
        self.receipts = Receipts(self.store, publisher)
        self.scheduler = Scheduler(self.store, publisher, config.expiry_interval)
        limits = Limits(config.max_envelope_bytes, config.default_ttl, config.max_ttl)
        self.intake = Intake(self.store, self.dispatcher, self.clock, limits)
        self._presence: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[Any]] = []
        self._http: _ApiServer | None = None
        self._http_socket: socket.socket | None = None

    @property
    def mqtt_port(self) -> int:
        return self.broker.port

    @property
    def http_port(self) -> int:
        assert self._http_socket is not None
        return int(self._http_socket.getsockname()[1])

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.http_port}"

    def _mqtt_url(self, request_host: str) -> str:
        return self.config.public_mqtt_url or f"mqtt://{request_host}:{self.mqtt_port}"

    async def _authenticate(
        self, client_id: str, username: str | None, password: str | None
    ) -> Identity | None:
        if not username or password is None:
            return None
        if username == SERVICE_USERNAME:
            ok = await self.store.run(self.store.authenticate_service, username, password)
            return ServiceIdentity(username) if ok else None
        if client_id != username:
            return None
        app_key = await self.store.run(self.store.authenticate_device, username, password)
        return DeviceIdentity(app_key, username) if app_key else None

    def _on_presence(self, device: DeviceIdentity, online: bool) -> None:
        self._presence.put_nowait((device.device, online))

    async def _presence_writer(self) -> None:
        while True:
            device_id, online = await self._presence.get()
            try:
                await self.store.run(self.store.set_presence, device_id, online)
            finally:
                self._presence.task_done()

    async def presence_idle(self) -> None:
        """Wait until every presence change seen so far is in the store."""
        await self._presence.join()

    async def start(self) -> None:
        await self.store.run(self.store.reset_presence)
        await self.broker.start()
        self.broker.tap(RECEIPT_FILTER, lambda topic, payload, _who: self.receipts.feed(topic, payload))
        await self.dispatcher.recover()
        for coro in (
            self.dispatcher.run(),
            self.receipts.run(),
            self.scheduler.run(),
            self._presence_writer(),
        ):
            self._tasks.append(asyncio.create_task(coro))

        api = create_api(ApiContext(self.store, self.intake, self.clock, self._mqtt_url))
        sock = socket.socket(socket.AF_INET6 if ":" in self.config.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.config.host, self.config.http_port))
        self._http_socket = sock
        self._http = _ApiServer(
            uvicorn.Config(api, log_level="warning", access_log=False, lifespan="off", loop="none")
        )
        self._tasks.append(asyncio.create_task(self._http.serve(sockets=[sock])))
        while not self._http.started:
            if self._tasks[-1].done():
                self._tasks[-1].result()
            await asyncio.sleep(0.01)
        log.info("started mqtt=%s:%d http=%s", self.config.host, self.mqtt_port, self.http_url)

    async def stop(self) -> None:
        """Stop taking requests, finish publishing what was accepted, then close broker and store."""
        if self._http is not None:
            self._http.should_exit = True
            http_task = self._tasks.pop()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(http_task), 5)
            self._tasks.append(http_task)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.dispatcher.drained(), 5)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.broker.shutdown()
        self.store.close()
        if self._http_socket is not None:
            self._http_socket.close()
        log.info("stopped")

    async def __aenter__(self) -> EmbeddedServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
