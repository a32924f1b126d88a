"""``MqttPublisher`` across lost connections (issue 13, item 5), against a real mosquitto.

A loopback TCP proxy between the publisher and mosquitto cuts the connection while the broker
stays up (it keeps our session: CONNACK session present = 1); killing mosquitto with SIGKILL and
starting it again loses the session (session present = 0). Only the second must re-publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.publisher import MqttPublisher
from tests.foreign.test_split import _free_port

TIMEOUT = 30.0


class _Proxy:
    """Forwards TCP connections to a port on 127.0.0.1; :meth:`cut` drops every one of them."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.transport.abort()

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class _Mosquitto:
    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"allow_anonymous true\nlistener {self.port} 127.0.0.1\n")
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "mosquitto", "-c", str(self.conf), stderr=asyncio.subprocess.DEVNULL
        )
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while True:  # an outside process: poll its port, with a deadline
            assert self.proc.returncode is None, "mosquitto exited"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                assert asyncio.get_running_loop().time() < deadline, "mosquitto did not listen"
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await asyncio.wait_for(self.proc.wait(), TIMEOUT)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), TIMEOUT)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[_Mosquitto]:
    b = _Mosquitto(tmp_path)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


def _retained(port: int, topic: str) -> bytes:
    """What a fresh subscriber gets first on ``topic`` (mosquitto_sub, as a device would)."""
    out = subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-C", "1", "-W", "10"],
        capture_output=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.rstrip(b"\n")


async def test_publisher_reconnects_and_republishes_only_when_the_broker_lost_its_session(
    broker: _Mosquitto,
) -> None:
    proxy = _Proxy(broker.port)
    await proxy.start()
    generation = [1]
    losses: asyncio.Queue[int] = asyncio.Queue()

    async def on_session_lost() -> None:
        losses.put_nowait(generation[0])

    publisher = MqttPublisher(
        f"mqtt://127.0.0.1:{proxy.port}", "mqttpush-service", "x", subscriptions=("mqttpush/+/d/+/r",)
    )
    await publisher.start(lambda _t, _p: None, on_session_lost=on_session_lost)
    try:
        # Connection dropped, broker still up: paho reconnects by itself, the publish made during
        # the outage resolves on its PUBACK after that, and the broker has it.
        proxy.cut()
        await asyncio.wait_for(
            publisher.publish("mqttpush/a/d/x/m/1", b"during the outage", retain=True), TIMEOUT
        )
        assert await asyncio.to_thread(_retained, broker.port, "mqttpush/a/d/x/m/1") == b"during the outage"

        # Broker killed and restarted: its retained messages and our session are gone.
        await broker.kill()
        generation[0] = 2
        await broker.start()
        assert await asyncio.wait_for(losses.get(), TIMEOUT) == 2  # not 1: the cut kept the session
        await asyncio.wait_for(publisher.publish("mqttpush/a/d/x/m/2", b"after", retain=True), TIMEOUT)
        assert losses.empty()
    finally:
        await publisher.stop()
        await proxy.close()
