"""``serve`` with its broker in a second process (mqttpush.server.DualProcessServer, linked by
mqttpush.cluster.pipe): the path works end to end, a dead broker process is replaced without
losing what was accepted, and the broker process never outlives its parent."""

from __future__ import annotations

import asyncio
import json
import os
import random
import select
import signal
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from benchmarks.procs import child_pids
from mqttpush.client import AsyncPushClient
from mqttpush.cluster import pipe
from mqttpush.config import ServerConfig, config_from_json, config_to_json
from mqttpush.server import DualProcessServer
from mqttpush.store import Store
from mqttpush.topics import AppIdentity, DeviceIdentity, ServiceIdentity, inbox_filter, receipt_topic
from tests.conftest import ServeProcess
from tests.mqtt_raw import RawClient
from tests.pg import PgServer
from tests.test_crash import _push_until, assert_each_once


@dataclass
class Dual:
    server: DualProcessServer
    app_key: str
    secret: str
    tokens: dict[str, str]

    def client(self) -> AsyncPushClient:
        return AsyncPushClient(self.server.http_url, self.app_key, self.secret)

    async def device(self, device_id: str) -> RawClient:
        c, code, _ = await RawClient.connect(
            self.server.mqtt_port, device_id, device_id, self.tokens[device_id]
        )
        assert code == 0
        await c.subscribe(inbox_filter(self.app_key, device_id))
        return c


def _fleet(data: Path, n: int, url: str | None = None) -> tuple[str, str, dict[str, str]]:
    store = Store(data, url=url)
    app = store.apps.create_app("dual")
    devices = store.devices.import_devices(
        app.app_key, [{"install_id": f"i{i}", "platform": "iot"} for i in range(n)]
    )
    store.close()
    return app.app_key, app.secret, {d["device_id"]: d["device_token"] for d in devices}


@pytest.fixture
async def dual(tmp_path: Path) -> AsyncIterator[Dual]:
    data = tmp_path / "data"
    key, secret, tokens = _fleet(data, 3)
    async with DualProcessServer(ServerConfig(data_dir=data, mqtt_port=0, http_port=0)) as server:
        yield Dual(server, key, secret, tokens)


def _exits_within(pid: int, timeout: float) -> bool:
    """Wait for any process (not only a child of ours) to end, on a pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


async def test_push_goes_through_the_broker_process_and_its_receipt_is_recorded(dual: Dual) -> None:
    server = dual.server
    assert server.broker_pid is not None and server.broker_pid != os.getpid()
    device = next(iter(dual.tokens))
    c = await dual.device(device)
    async with dual.client() as api:
        msg_id = (await api.push({"target": {"devices": [device]}, "notification": {"title": "hi"}}))[
            "msg_id"
        ]
        got = await c.next_publish(10)
        assert got is not None and json.loads(got.payload)["id"] == msg_id
        handled = server.receipts.handled
        c.publish(
            receipt_topic(dual.app_key, device), json.dumps({"id": msg_id, "event": "arrived"}).encode(), 1
        )
        await asyncio.wait_for(server.receipts.wait_handled(handled + 1), 10)
        status = await api.message(msg_id)
    assert [d["state"] for d in status["deliveries"]] == ["arrived"]
    await c.disconnect()


async def test_on_the_postgresql_store_the_broker_process_logs_devices_in_through_the_parent(
    tmp_path: Path, pg: PgServer
) -> None:
    url = pg.fresh_url()
    data = tmp_path / "data"
    key, secret, tokens = _fleet(data, 1, url)
    config = ServerConfig(data_dir=data, store=url, mqtt_port=0, http_port=0)
    async with DualProcessServer(config) as server:
        dual = Dual(server, key, secret, tokens)
        device = next(iter(tokens))
        c = await dual.device(device)
        async with dual.client() as api:
            msg_id = (await api.push({"target": {"devices": [device]}, "notification": {"title": "pg"}}))[
                "msg_id"
            ]
            got = await c.next_publish(10)
        assert got is not None and json.loads(got.payload)["id"] == msg_id
        await c.disconnect()


async def test_a_wrong_device_token_is_refused_by_the_broker_process(dual: Dual) -> None:
    device = next(iter(dual.tokens))
    c, code, _ = await RawClient.connect(dual.server.mqtt_port, device, device, "not-the-token")
    assert code == 5
    await c.close()


async def test_presence_and_broker_counters_come_from_the_broker_process(dual: Dual) -> None:
    server = dual.server
    device = next(iter(dual.tokens))
    c = await dual.device(device)
    await server.presence_idle()
    async with dual.client() as api:
        assert (await api.device(device))["online"] is True
    await c.disconnect()
    for _ in range(2):  # the process reports every second: the second report is after the connect
        server.reported.clear()
        await asyncio.wait_for(server.reported.wait(), 10)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        metrics = (await http.get("/metrics")).text
        ready = await http.get("/readyz")
    assert 'mqttpush_mqtt_connects_total{transport="tcp"} 1' in metrics
    assert ready.status_code == 200


async def test_a_killed_broker_process_is_replaced_on_its_port_and_pending_pushes_arrive(dual: Dual) -> None:
    server = dual.server
    port, old = server.mqtt_port, server.broker_pid
    assert old is not None
    device = next(iter(dual.tokens))
    c = await dual.device(device)
    os.kill(old, signal.SIGKILL)
    assert await c.closed_by_server(10)
    async with dual.client() as api:
        # Accepted while no broker process runs: committed, and published once one is back.
        msg_id = (await api.push({"target": {"devices": [device]}, "notification": {"title": "x"}}))["msg_id"]
        await asyncio.wait_for(server.restarted.wait(), 30)
        assert server.restarts == 1 and server.broker_pid not in (None, old)
        assert server.mqtt_port == port
        c = await dual.device(device)
        got = await c.next_publish(10)
        assert got is not None and json.loads(got.payload)["id"] == msg_id
        assert (await api.message(msg_id))["deliveries"][0]["state"] == "published"
    await c.disconnect()


def test_kill_9_of_the_broker_process_during_10000_pushes_loses_nothing(tmp_path: Path) -> None:
    """As test_crash, but the broker process dies mid-run and ``serve`` goes on accepting."""
    data = tmp_path / "data"
    key, secret, tokens = _fleet(data, 20)
    seed = random.randrange(1 << 30)
    kill_after = random.Random(seed).uniform(0.5, 3.0)
    server = ServeProcess(data)
    try:
        [broker] = child_pids(server.proc.pid)
        accepted: dict[str, str] = {}
        killer = threading.Timer(kill_after, os.kill, (broker, signal.SIGKILL))
        killer.start()
        _push_until(server, key, secret, list(tokens), accepted, None)
        killer.join()
        assert _exits_within(broker, 10)
        assert server.proc.poll() is None, "serve itself must not die with its broker process"
        assert len(accepted) >= 10_000
        got = asyncio.run(_receive_all(server.mqtt_port, key, tokens, accepted))
    finally:
        server.stop(signal.SIGTERM)
    assert_each_once(accepted, got, f"seed={seed} kill_after={kill_after:.2f}s")


async def _receive_all(
    port: int, app_key: str, tokens: dict[str, str], expected: dict[str, str]
) -> dict[str, list[str]]:
    # The broker process may still be starting again: connect until it answers.
    from tests.test_crash import _receive

    for _ in range(100):
        try:
            return await _receive(port, app_key, tokens, expected)
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError("the broker process never came back")


def test_serve_killed_takes_its_broker_process_with_it(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "data")
    [broker] = child_pids(server.proc.pid)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    assert _exits_within(broker, 10), "the broker process outlived serve"


def test_sigterm_stops_serve_and_its_broker_process(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "data")
    [broker] = child_pids(server.proc.pid)
    assert server.stop(signal.SIGTERM) == 0
    assert _exits_within(broker, 10)


@pytest.mark.parametrize(
    ("flags", "env"),
    [(("--no-broker-process",), {}), ((), {"MQTTPUSH_BROKER_PROCESS": "0"})],
    ids=["flag", "variable"],
)
def test_no_broker_process_runs_everything_in_one(
    tmp_path: Path, flags: tuple[str, ...], env: dict[str, str]
) -> None:
    server = ServeProcess(tmp_path / "data", 0, 0, *flags, env=env)
    try:
        assert child_pids(server.proc.pid) == []
    finally:
        assert server.stop(signal.SIGTERM) == 0


def test_the_config_reaches_the_broker_process_as_it_was() -> None:
    config = ServerConfig(
        data_dir=Path("/tmp/d"),
        tls_cert=Path("/c.pem"),
        tls_key=Path("/k.pem"),
        wss_port=0,
        broker_process=True,
        login_backoff=2.5,
        metrics_token=None,
    )
    assert config_from_json(config_to_json(config)) == config


def test_frames_split_anywhere_are_read_whole() -> None:
    """The pipe's framing (pure encoders, one parser) survives any cut of the byte stream."""
    got: list[tuple[int, bytes]] = []

    class Sink(pipe._Framed):
        def frame_received(self, kind: int, body: bytes) -> None:
            got.append((kind, body))

    async def feed() -> None:
        data = b"".join(
            [
                pipe.encode_publish("mqttpush/a/d/x/m/1", b"\x00payload", 1, True, None),
                pipe.encode_up("mqttpush/a/d/x/r", b'{"id": "1", "event": "arrived"}'),
                pipe.frame(pipe.STOP),
            ]
        )
        for cut in range(len(data) + 1):
            got.clear()
            sink = Sink()
            sink.data_received(data[:cut])
            sink.data_received(data[cut:])
            assert [k for k, _ in got] == [pipe.PUBLISH, pipe.UP, pipe.STOP]
        topic, payload, qos, retain, expires_at = pipe.decode_publish(got[0][1])
        assert (topic, payload, qos, retain, expires_at) == (
            "mqttpush/a/d/x/m/1",
            b"\x00payload",
            1,
            True,
            float("inf"),
        )
        assert pipe.decode_up(got[1][1]) == ("mqttpush/a/d/x/r", b'{"id": "1", "event": "arrived"}')

    asyncio.run(feed())


@pytest.mark.parametrize(
    "who",
    [DeviceIdentity("a1", "d1"), AppIdentity("a1"), ServiceIdentity("mqttpush-service"), None],
)
def test_identities_cross_the_pipe_unchanged(
    who: DeviceIdentity | AppIdentity | ServiceIdentity | None,
) -> None:
    assert pipe.decode_identity(json.loads(json.dumps(pipe.encode_identity(who)))) == who
    assert pipe.decode_identity(["device", 1, None]) is None
