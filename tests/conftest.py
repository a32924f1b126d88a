"""Shared fixtures: a real ``mqttpush serve`` (embedded) on ephemeral loopback ports.

Every event loop here is uvloop's, as in ``mqttpush serve``: the servers a test starts (``_serve``'s
thread) and the async tests themselves (``pytest_asyncio_loop_factories``). Code that works only on
asyncio's own loop (an isinstance check on its transport classes, say) must fail here, not in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop

from bridge.vendors import check_vendor_config
from mqttpush.client import PushClient
from mqttpush.clock import Clock, ManualClock
from mqttpush.config import ServerConfig
from mqttpush.server import DualProcessServer, EmbeddedServer
from mqttpush.store import Store
from tests.fakes.apns import FakeApns, fake_apns
from tests.fakes.tls import tls_server
from tests.pg import PgServer, pg_server


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Run every async test on uvloop (one factory: the test ids stay as they were)."""
    return {"uvloop": uvloop.new_event_loop}


@dataclass
class Running:
    """A server running on its own event loop thread, as an outside client sees it."""

    server: EmbeddedServer | DualProcessServer
    loop: asyncio.AbstractEventLoop
    data_dir: Path
    app_key: str = ""
    app_secret: str = ""
    _installs: int = field(default=0)

    @property
    def mqtt_port(self) -> int:
        return self.server.mqtt_port

    @property
    def url(self) -> str:
        return self.server.http_url

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def advance(self, seconds: float) -> None:
        """Move the server's manual clock forward and run one scheduler pass at the new time."""
        clock = self.server.clock
        assert isinstance(clock, ManualClock)

        async def step() -> None:
            clock.advance(seconds)
            await self.server.bridge.scheduler.tick()
            await self.server.dispatcher.drained()

        self.call(step())

    def client(self) -> PushClient:
        return PushClient(self.url, self.app_key, self.app_secret)

    def configure_vendor(self, vendor: str, obj: dict[str, Any], base_dir: Path) -> None:
        """Store the app's settings for ``vendor`` (a VENDORS.json object; files relative to ``base_dir``)."""
        store = Store(self.data_dir)
        store.vendors.put_vendor_config(
            self.app_key, vendor, check_vendor_config(vendor, obj, base_dir, None)
        )
        store.close()

    def register(self, n: int = 1, platform: str = "android") -> list[tuple[str, str]]:
        """Register ``n`` new devices over HTTP; returns [(device_id, device_token)]."""
        out = []
        with PushClient(self.url, self.app_key) as c:
            for _ in range(n):
                self._installs += 1
                reg = c.register_device(f"install-{self._installs}", platform)
                out.append((reg["device_id"], reg["device_token"]))
        return out

    def push(self, device_ids: list[str], title: str = "t", body: str = "b", **extra: Any) -> str:
        with self.client() as c:
            return str(
                c.push(
                    {"target": {"devices": device_ids}, "notification": {"title": title, "body": body}}
                    | extra
                )["msg_id"]
            )

    def wait_state(self, msg_id: str, device_id: str, state: str, timeout: float = 10) -> dict[str, Any]:
        """Wait until a delivery reaches ``state``: re-read it through the API after each stored receipt."""
        receipts = self.server.receipts
        self.call(self.server.dispatcher.drained(), timeout)
        with self.client() as c:
            while True:
                handled = receipts.handled
                doc = c.message(msg_id)
                for d in doc["deliveries"]:
                    if d["device_id"] == device_id and d["state"] == state:
                        return d
                try:
                    self.call(asyncio.wait_for(receipts.wait_handled(handled + 1), timeout), timeout + 1)
                except TimeoutError:
                    raise AssertionError(f"{msg_id}/{device_id} never reached {state}: {doc}") from None


@contextlib.asynccontextmanager
async def serving_apns(r: Running, directory: Path, **settings: Any) -> AsyncIterator[FakeApns]:
    """A fake APNs over TLS set as the app's APNs (its key written to ``directory``). On the way out
    the server closes its vendor connections before the fake stops (else its TLS shutdown waits)."""
    fake = fake_apns(directory, **settings)
    async with tls_server(fake) as (base_url, ca_file):
        try:
            r.configure_vendor("apns", fake.vendor_config(base_url, ca_file), directory)
            yield fake
        finally:
            await asyncio.to_thread(r.call, r.server.bridge.vendors.close())


def _run_loop(loop: asyncio.AbstractEventLoop, started: Future[None]) -> None:
    asyncio.set_event_loop(loop)
    started.set_result(None)
    loop.run_forever()


def _serve(
    data_dir: Path, clock: Clock | None = None, *, dual: bool = False, **config_fields: Any
) -> Iterator[Running]:
    """A server on its own loop thread: :class:`EmbeddedServer`, or with ``dual`` what ``serve``
    runs on a machine with more than one core (its broker in a child process)."""
    loop = uvloop.new_event_loop()
    started: Future[None] = Future()
    thread = threading.Thread(target=_run_loop, args=(loop, started), daemon=True)
    thread.start()
    started.result(5)
    config = ServerConfig(data_dir=data_dir, mqtt_port=0, http_port=0, **config_fields)

    async def make() -> EmbeddedServer | DualProcessServer:
        server = DualProcessServer(config, clock) if dual else EmbeddedServer(config, clock)
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(make(), loop).result(30)
    r = Running(server, loop, data_dir)
    app = Store(data_dir, url=config.store).apps.create_app("test")
    r.app_key, r.app_secret = app.app_key, app.secret
    try:
        yield r
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """One throwaway PostgreSQL server for the session (each user takes a fresh schema of it)."""
    with pg_server() as server:
        yield server


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    """An embedded server with one app, on ephemeral ports, torn down after the test."""
    yield from _serve(tmp_path / "data")


@pytest.fixture(params=["one process", "broker process"])
def either_shape(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Running]:
    """Like ``running``, once for each shape of ``serve``: all in one process, and the broker in
    a second one (the default on a machine with more than one core). A module opts in by
    defining its ``running`` fixture as this one."""
    yield from _serve(tmp_path / "data", dual=request.param == "broker process")


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def clocked(tmp_path: Path, manual_clock: ManualClock) -> Iterator[Running]:
    """Like ``running``, on a :class:`ManualClock`: time moves only with ``r.advance(seconds)``."""
    yield from _serve(tmp_path / "data", manual_clock)


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``mqttpush ARGS`` as a user would (a separate process)."""
    return subprocess.run(
        [sys.executable, "-m", "mqttpush", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def cli_json(*args: str) -> Any:
    proc = cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


class ServeProcess:
    """``mqttpush serve`` as its own process, as an operator runs it (None leaves a flag out)."""

    def __init__(
        self,
        data_dir: Path | None,
        mqtt_port: int | None = 0,
        http_port: int | None = 0,
        *extra: str,
        env: dict[str, str] | None = None,
    ) -> None:
        args = [sys.executable, "-m", "mqttpush", "serve", "--json", "--log-level", "warning", *extra]
        for flag, value in (("--data-dir", data_dir), ("--mqtt-port", mqtt_port), ("--http-port", http_port)):
            if value is not None:
                args += [flag, str(value)]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(
                f"server did not start: {self.proc.stderr.read() if self.proc.stderr else ''}"
            )
        self.ready: dict[str, Any] = json.loads(line)
        ready = self.ready
        self.mqtt_port, self.http_port = ready["mqtt_port"], ready["http_port"]
        self.url = ready["http_url"]
        self.data_dir = ready["data_dir"]

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(30)
