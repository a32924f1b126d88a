"""The NATS link between broker nodes and bridges (mqttpush.cluster, docs/scale-out.md "Processes").

Real processes throughout: nats-server (alone or three with routes), ``python -m mqttpush broker
--cluster … --node-id …`` nodes and a ``python -m mqttpush bridge --cluster …`` over one SQLite
data dir, and raw MQTT devices (tests/mqtt_raw.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from mqttpush.client import PushClient
from mqttpush.models import Registration
from mqttpush.store import Store
from tests.conftest import cli
from tests.mqtt_raw import RawClient

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Nats:
    proc: subprocess.Popen[bytes]
    port: int
    monitor: int

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def _wait_routes(servers: list[Nats], timeout: float = 15.0) -> None:
    """Until each server is up and routed to all the others (its monitoring page says so)."""
    end = time.monotonic() + timeout
    for server in servers:
        while True:
            try:
                doc = httpx.get(f"http://127.0.0.1:{server.monitor}/routez", timeout=1).json()
                if doc.get("num_routes", 0) >= len(servers) - 1:
                    break
            except httpx.HTTPError:
                pass
            if server.proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"nats-server on {server.port} not ready (routes)")
            time.sleep(0.05)


@contextlib.contextmanager
def nats_cluster(tmp: Path, n: int) -> Iterator[list[Nats]]:
    """``n`` nats-servers on loopback, each routed to the others (one cluster)."""
    cports = [_free_port() for _ in range(n)]
    servers: list[Nats] = []
    try:
        for i in range(n):
            port, monitor = _free_port(), _free_port()
            args = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor)]
            if n > 1:
                routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(cports) if j != i)
                args += [
                    "--cluster_name",
                    "mqttpush-test",
                    "--cluster",
                    f"nats://127.0.0.1:{cports[i]}",
                    "--routes",
                    routes,
                ]
            log = open(tmp / f"nats-{i}.log", "wb")  # noqa: SIM115 (kept open while it runs)
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
            servers.append(Nats(proc, port, monitor))
        _wait_routes(servers)
        yield servers
    finally:
        for s in servers:
            if s.proc.poll() is None:
                s.proc.terminate()
        for s in servers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                s.proc.wait(10)


class Proc:
    """``python -m mqttpush ARGS --json``: started, its ready line read, killed at the end."""

    def __init__(self, *args: str, log: Path) -> None:
        self._log = open(log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mqttpush", *args, "--json", "--log-level", "info"],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.ready: dict[str, Any] = {}
        self.log = log

    async def started(self, timeout: float = 30.0) -> Proc:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout)
        if not line:
            raise AssertionError(f"{self.proc.args} did not start: {self.log.read_text()}")
        self.ready = json.loads(line)
        return self

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


@dataclass
class Cluster:
    data_dir: Path
    tmp: Path
    nats: list[Nats]
    app_key: str
    app_secret: str
    procs: list[Proc]

    def urls(self, *which: int) -> str:
        return ",".join(self.nats[i].url for i in (which or range(len(self.nats))))

    async def node(self, node_id: str, *nats: int) -> Proc:
        p = Proc(
            "broker",
            "--data-dir",
            str(self.data_dir),
            "--mqtt-port",
            "0",
            "--cluster",
            self.urls(*nats),
            "--node-id",
            node_id,
            log=self.tmp / f"node-{node_id}.log",
        )
        self.procs.append(p)
        return await p.started()

    async def bridge(self, *nats: int) -> Proc:
        p = Proc(
            "bridge",
            "--data-dir",
            str(self.data_dir),
            "--http-port",
            "0",
            "--cluster",
            self.urls(*nats),
            log=self.tmp / f"bridge-{len(self.procs)}.log",
        )
        self.procs.append(p)
        return await p.started()

    def devices(self, n: int) -> list[Registration]:
        store = Store(self.data_dir)
        try:
            return [
                store.devices.register_device(self.app_key, f"i-{os.urandom(6).hex()}", "android")
                for _ in range(n)
            ]
        finally:
            store.close()

    def client(self, bridge: Proc) -> PushClient:
        return PushClient(bridge.ready["http_url"], self.app_key, self.app_secret)

    def states(self, msg_ids: list[str]) -> dict[tuple[str, str], str]:
        store = Store(self.data_dir)
        try:
            out = {}
            for m in msg_ids:
                status = store.messages.message_status(self.app_key, m)
                assert status is not None
                for d in status.deliveries:
                    out[(m, d.device_id)] = d.state
            return out
        finally:
            store.close()


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, n_nats: int = 1) -> AsyncIterator[Cluster]:
    data_dir = tmp_path / "data"
    store = Store(data_dir)
    app = store.apps.create_app("cluster")
    store.close()
    with nats_cluster(tmp_path, n_nats) as servers:
        c = Cluster(data_dir, tmp_path, servers, app.app_key, app.secret, [])
        try:
            yield c
        finally:
            for p in c.procs:
                p.stop()


async def device(port: int, reg: Registration, app_key: str) -> RawClient:
    """A device connected and subscribed to its inbox and its app's broadcasts."""
    c, code, _ = await RawClient.connect(port, reg.device_id, reg.device_id, reg.device_token)
    assert code == 0
    codes = await c.subscribe(f"mqttpush/{app_key}/d/{reg.device_id}/m/+", f"mqttpush/{app_key}/b/+", qos=1)
    assert codes == [1, 1]
    return c


async def device_or_closed(port: int, reg: Registration, app_key: str) -> RawClient | None:
    """:func:`device`, or None when the server closes the connection before its SUBACK (a
    takeover by a CONNECT on another node may land between CONNACK and SUBACK)."""
    try:
        return await device(port, reg, app_key)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


async def _closed(c: RawClient | None) -> bool:
    return True if c is None else await c.closed_by_server(2)


async def receive(c: RawClient, want: set[str], timeout: float = 15.0) -> list[str]:
    """Message ids received (repeats kept, in order) until every one of ``want`` came, or timeout."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    got: list[str] = []
    while not want <= set(got):
        left = end - loop.time()
        if left <= 0:
            break
        p = await c.next_publish(left)
        if p is None:
            break
        if p.payload:
            got.append(json.loads(p.payload)["id"])
    return got


def push(client: PushClient, device_ids: list[str], title: str = "t") -> str:
    return str(
        client.push({"target": {"devices": device_ids}, "notification": {"title": title, "body": "b"}})[
            "msg_id"
        ]
    )


async def until(check: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``check()`` (sync) until it returns something truthy, with a deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# --- tests ------------------------------------------------------------------------------------------


async def test_push_goes_through_the_node_holding_the_device(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        n1, n2, bridge = await asyncio.gather(c.node("n1"), c.node("n2"), c.bridge())
        online, offline = c.devices(2)
        dev = await device(n2.ready["mqtt_port"], online, c.app_key)
        with c.client(bridge) as api:
            live = await asyncio.to_thread(push, api, [online.device_id])
            waiting = await asyncio.to_thread(push, api, [offline.device_id])
            assert await receive(dev, {live}) == [live]
            states = await until(
                lambda: (s := c.states([live, waiting]))[(live, online.device_id)] == "published" and s,
                what="published",
            )
            # No node holds the offline device: nobody took it, it waits in the store.
            assert states[(waiting, offline.device_id)] == "accepted"
            # It goes out when the device subscribes, on any node.
            late = await device(n1.ready["mqtt_port"], offline, c.app_key)
            assert await receive(late, {waiting}) == [waiting]
            # A receipt through node 1 reaches the store through a bridge.
            late.publish(
                f"mqttpush/{c.app_key}/d/{offline.device_id}/r",
                json.dumps({"id": waiting, "event": "arrived"}).encode(),
                qos=1,
            )
            await until(
                lambda: c.states([waiting])[(waiting, offline.device_id)] == "arrived", what="arrived"
            )
            # Arrived: not sent again on the next SUBSCRIBE.
            await late.disconnect()
            again = await device(n2.ready["mqtt_port"], offline, c.app_key)
            after = await asyncio.to_thread(push, api, [offline.device_id])
            assert await receive(again, {after}) == [after]
            for d in (dev, again):
                await d.close()


async def test_broadcast_reaches_devices_on_every_node(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        n1, n2, bridge = await asyncio.gather(c.node("n1"), c.node("n2"), c.bridge())
        a, b, later = c.devices(3)
        da = await device(n1.ready["mqtt_port"], a, c.app_key)
        db = await device(n2.ready["mqtt_port"], b, c.app_key)
        with c.client(bridge) as api:
            doc = await asyncio.to_thread(
                api.push, {"target": {"broadcast": True}, "notification": {"title": "all", "body": "b"}}
            )
        msg_id = doc["msg_id"]
        assert await receive(da, {msg_id}) == [msg_id]
        assert await receive(db, {msg_id}) == [msg_id]
        # A device that subscribes afterwards gets the live broadcast from the store.
        dl = await device(n2.ready["mqtt_port"], later, c.app_key)
        assert await receive(dl, {msg_id}) == [msg_id]
        for d in (da, db, dl):
            await d.close()


async def test_node_killed_device_moves_and_gets_everything_once(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        n1, n2, bridge = await asyncio.gather(c.node("n1"), c.node("n2"), c.bridge())
        (reg,) = c.devices(1)
        dev = await device(n1.ready["mqtt_port"], reg, c.app_key)
        with c.client(bridge) as api:
            first = await asyncio.to_thread(push, api, [reg.device_id], "before")
            assert await receive(dev, {first}) == [first]
            dev.publish(
                f"mqttpush/{c.app_key}/d/{reg.device_id}/r",
                json.dumps({"id": first, "event": "arrived"}).encode(),
                qos=1,
            )
            await until(lambda: c.states([first])[(first, reg.device_id)] == "arrived", what="arrived")
            n1.kill()
            assert await dev.closed_by_server(10)
            meanwhile = [await asyncio.to_thread(push, api, [reg.device_id], f"m{i}") for i in range(20)]
            moved = await device(n2.ready["mqtt_port"], reg, c.app_key)
            got = await receive(moved, set(meanwhile))
            assert set(got) == set(meanwhile)  # every message accepted meanwhile
            assert len(got) == len(set(got))  # and each once
            assert first not in got  # arrived before: not sent again
            # New pushes reach it on node 2 live.
            live = await asyncio.to_thread(push, api, [reg.device_id], "after")
            assert await receive(moved, {live}) == [live]
            await moved.close()


async def test_connect_on_another_node_takes_the_session_over(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        n1, n2, bridge = await asyncio.gather(c.node("n1"), c.node("n2"), c.bridge())
        (reg,) = c.devices(1)
        old = await device(n1.ready["mqtt_port"], reg, c.app_key)
        new = await device(n2.ready["mqtt_port"], reg, c.app_key)
        assert await old.closed_by_server(10)
        with c.client(bridge) as api:
            msg_id = await asyncio.to_thread(push, api, [reg.device_id])
            assert await receive(new, {msg_id}) == [msg_id]
        await new.close()


async def test_two_connects_at_once_on_two_nodes_leave_one_session(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        n1, n2, bridge = await asyncio.gather(c.node("n1"), c.node("n2"), c.bridge())
        regs = c.devices(5)
        with c.client(bridge) as api:
            for reg in regs:
                pair = await asyncio.gather(
                    device_or_closed(n1.ready["mqtt_port"], reg, c.app_key),
                    device_or_closed(n2.ready["mqtt_port"], reg, c.app_key),
                )
                closed = await asyncio.gather(*(_closed(d) for d in pair))
                assert sorted(closed) == [False, True], f"{reg.device_id}: closed={closed}"
                survivor = pair[closed.index(False)]
                assert survivor is not None
                msg_id = await asyncio.to_thread(push, api, [reg.device_id])
                got = await receive(survivor, {msg_id})
                assert set(got) == {msg_id}
                await survivor.close()


async def test_nats_server_killed_loses_no_accepted_push(tmp_path: Path) -> None:
    async with cluster(tmp_path, n_nats=3) as c:
        # Each process starts on its own NATS server (it learns the others from the cluster).
        n1, n2, bridge = await asyncio.gather(c.node("n1", 0), c.node("n2", 1), c.bridge(2))
        regs = c.devices(4)
        devs = [
            await device((n1 if i % 2 else n2).ready["mqtt_port"], reg, c.app_key)
            for i, reg in enumerate(regs)
        ]
        ids = [r.device_id for r in regs]
        with c.client(bridge) as api:
            sent = [await asyncio.to_thread(push, api, ids, f"a{i}") for i in range(10)]
            c.nats[0].kill()  # node 1's server: node 1 moves to another, pushes meanwhile wait or retry
            sent += [await asyncio.to_thread(push, api, ids, f"b{i}") for i in range(20)]
            c.nats[2].kill()  # the bridge's server
            sent += [await asyncio.to_thread(push, api, ids, f"c{i}") for i in range(10)]
        for d in devs:
            got = await receive(d, set(sent), timeout=30)
            assert set(got) == set(sent), f"missing {len(set(sent) - set(got))} of {len(sent)}"
            await d.close()


# --- command line and locks -------------------------------------------------------------------


def test_cluster_flags_are_checked(tmp_path: Path) -> None:
    data = str(tmp_path / "d")
    bad = cli("broker", "--data-dir", data, "--cluster", "http://127.0.0.1:4222")
    assert bad.returncode == 2 and "--cluster" in bad.stderr
    lone = cli("broker", "--data-dir", data, "--node-id", "n1")
    assert lone.returncode == 2 and "--node-id" in lone.stderr
    bad_id = cli("broker", "--data-dir", data, "--cluster", "nats://127.0.0.1:4222", "--node-id", "a/b")
    assert bad_id.returncode == 2 and "--node-id" in bad_id.stderr
    neither = cli("bridge", "--data-dir", data)
    assert neither.returncode == 2 and "--cluster" in neither.stderr
    both = cli(
        "bridge", "--data-dir", data, "--broker", "mqtt://127.0.0.1:1", "--cluster", "nats://127.0.0.1:1"
    )
    assert both.returncode == 2 and "--broker" in both.stderr


async def test_node_ids_are_locked_and_single_node_roles_kept(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await asyncio.gather(c.node("n1"), c.bridge(), c.bridge())  # two bridges share the store
        same = await asyncio.to_thread(
            cli,
            "broker",
            "--data-dir",
            str(c.data_dir),
            "--mqtt-port",
            "0",
            "--cluster",
            c.urls(),
            "--node-id",
            "n1",
        )
        assert same.returncode == 2 and "data_dir_locked" in same.stderr
        single = await asyncio.to_thread(cli, "broker", "--data-dir", str(c.data_dir), "--mqtt-port", "0")
        assert single.returncode == 2 and "data_dir_locked" in single.stderr
        serve = await asyncio.to_thread(
            cli, "serve", "--data-dir", str(c.data_dir), "--mqtt-port", "0", "--http-port", "0"
        )
        assert serve.returncode == 2 and "data_dir_locked" in serve.stderr
