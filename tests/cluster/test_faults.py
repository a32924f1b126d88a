"""The cluster under faults (docs/scale-out.md, "Faults"): real processes from
tests/cluster/harness.py (PostgreSQL, 3 NATS, 3 broker nodes and 2 bridges, HAProxy in front of
each tier), each fault a ``kill -9`` (PostgreSQL: a stop for 10 s). Devices are lean MQTT clients
(tests/cluster/fleet.py) that reconnect through HAProxy and dedupe by message id; pushes carry a
``biz_id`` and are sent again on a connection error or a 502/503, so none is accepted twice.

One cluster serves the module; each test starts from a healed one (everything killed is started
again and HAProxy sees it up) and uses an app of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from benchmarks.lean_http import HttpError, SignedConnection
from benchmarks.mqtt import Connection, open_connection
from mqttpush.client import PushClient
from tests.cluster.fleet import HOST, Credentials, Fleet, Pusher
from tests.cluster.harness import Cluster

LEASE = 3.0
"""Bridge lease (seconds): how long a killed bridge's task waits before the other claims it."""
DEVICES = 1_000
PUSHES = 10_000
TASK_DEVICES = 100_000


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(lease_seconds=LEASE) as c:
        yield c


@pytest.fixture
def healed(cluster: Cluster) -> Cluster:
    cluster.heal()
    return cluster


def _app(
    cluster: Cluster, name: str, devices: int, tags: list[str] | None = None
) -> tuple[dict[str, str], list[Credentials]]:
    app = cluster.create_app(name)
    rows = [{"install_id": f"{name}-{i}", "platform": "android", "tags": tags or []} for i in range(devices)]
    imported = cluster.import_devices(app["app_key"], rows) if devices else []
    return app, [Credentials(d["device_id"], d["device_token"]) for d in imported]


def _bridge_url(cluster: Cluster, i: int) -> str:
    return f"http://{HOST}:{cluster.bridges[i].ready['http_port']}"


def _broker_port(cluster: Cluster, i: int) -> int:
    return int(cluster.brokers[i].ready["mqtt_port"])


def _sql(cluster: Cluster, query: str, *args: Any) -> list[tuple[Any, ...]]:
    assert cluster.postgres is not None
    with psycopg.connect(cluster.postgres.url, autocommit=True) as conn:
        return conn.execute(query, args).fetchall()


async def _state(api: SignedConnection, msg_id: str, device_id: str) -> str:
    doc = await api.request("GET", f"/api/v1/messages/{msg_id}")
    return next(d["state"] for d in doc["deliveries"] if d["device_id"] == device_id)


async def _until_state(
    api: SignedConnection, msg_id: str, device_id: str, want: str, timeout: float = 15
) -> None:
    end = time.monotonic() + timeout
    while (state := await _state(api, msg_id, device_id)) != want:
        assert time.monotonic() < end, f"{msg_id} still {state}, not {want}"
        await asyncio.sleep(0.05)  # polling the API for another process's progress, with a deadline


# --- 1. a node killed: its device moves and gets what was accepted meanwhile -------------------------


async def test_device_of_a_killed_node_reconnects_elsewhere_and_gets_everything_once(healed: Cluster) -> None:
    app, (creds,) = _app(healed, "moves", 1)
    fleet = Fleet(app["app_key"], [creds], healed.mqtt_port, port=_broker_port(healed, 0))
    device = fleet.devices[0]
    to_bridge_2 = Pusher(_bridge_url(healed, 1), app["app_key"], app["app_secret"], connections=4)
    api = SignedConnection(_bridge_url(healed, 1), app["app_key"], app["app_secret"])
    await fleet.start()
    try:
        assert device.connected_port == _broker_port(healed, 0)  # on broker 1
        first = (await to_bridge_2.push_all([("first", creds.device_id)], 30))["first"]  # via bridge 2
        await fleet.until(lambda: first in device.received, 15, "the first push on broker 1")
        await _until_state(api, first, creds.device_id, "arrived")  # its receipt is stored

        healed.brokers[0].kill9()
        meanwhile = [(f"m{i}", creds.device_id) for i in range(20)]
        accepted = set((await to_bridge_2.push_all(meanwhile, 60)).values()) - {first}
        assert len(accepted) == 20
        await fleet.until(lambda: accepted <= device.received.keys(), 30, "every push accepted meanwhile")

        assert device.connected_port == healed.mqtt_port  # it came back through HAProxy …
        assert device.sessions == 2  # … to another node (broker 1 is dead)
        assert all(device.received[m] == 1 for m in accepted)  # each once
        assert device.received[first] == 1  # arrived before: not sent again
        assert device.misrouted == []
    finally:
        api.close()
        await fleet.stop()


# --- 4. one device, two nodes, one session ------------------------------------------------------------


async def test_one_device_connecting_to_two_nodes_at_once_keeps_one_session(healed: Cluster) -> None:
    app, regs = _app(healed, "twice", 10)
    pusher = Pusher(healed.http_url, app["app_key"], app["app_secret"], connections=2)
    inbox = f"mqttpush/{app['app_key']}/d/"
    for creds in regs:
        got: dict[int, list[str]] = {0: [], 1: []}

        async def connect(
            node: int, creds: Credentials = creds, got: dict[int, list[str]] = got
        ) -> Connection:
            def on_publish(_c: Connection, topic: bytes, payload: bytes, _q: int, _r: bool) -> None:
                if payload:
                    got[node].append(json.loads(payload)["id"])

            conn = await open_connection(
                HOST,
                _broker_port(healed, node),
                creds.device_id,
                creds.device_id,
                creds.token,
                timeout=10,
                on_publish=on_publish,
            )
            with contextlib.suppress(ConnectionError):  # taken over before its SUBACK came
                await conn.subscribe([f"{inbox}{creds.device_id}/m/+"], qos=1)
            return conn

        pair = await asyncio.gather(connect(0), connect(1))
        done, _ = await asyncio.wait(
            [asyncio.ensure_future(c.closed) for c in pair], timeout=10, return_when="FIRST_COMPLETED"
        )
        assert len(done) == 1, f"{creds.device_id}: {len(done)} sessions closed"
        loser = 0 if pair[0].closed.done() else 1
        survivor = pair[1 - loser]
        msg_id = (await pusher.push_all([(f"to-{creds.device_id}", creds.device_id)], 30))[
            f"to-{creds.device_id}"
        ]
        end = time.monotonic() + 15
        while msg_id not in got[1 - loser]:
            assert time.monotonic() < end, f"{creds.device_id}: the surviving session did not get {msg_id}"
            await asyncio.wait([asyncio.ensure_future(survivor.closed)], timeout=0.05)
        assert survivor.is_open and pair[loser].closed.done()
        assert msg_id not in got[loser]
        survivor.disconnect()


# --- 3. PostgreSQL stopped for 10 s ---------------------------------------------------------------------


async def test_store_stopped_for_10_s_answers_503_then_everything_resumes(healed: Cluster) -> None:
    assert healed.postgres is not None
    app, (online, later) = _app(healed, "outage", 2)
    fleet = Fleet(app["app_key"], [online], healed.mqtt_port)
    await fleet.start()
    api = SignedConnection(healed.http_url, app["app_key"], app["app_secret"])
    refused: list[str] = []
    try:
        await asyncio.to_thread(healed.postgres.stop)
        stopped = time.monotonic()
        while time.monotonic() - stopped < 10:  # the outage lasts 10 s; push all along
            biz_id = f"out-{len(refused)}"
            with pytest.raises(HttpError) as answer:
                await asyncio.wait_for(
                    api.request("POST", "/api/v1/push", Pusher.body(biz_id, online.device_id)), 30
                )
            assert answer.value.status == 503, answer.value  # never 202 while nothing can commit
            assert answer.value.code == "store_unavailable"
            assert answer.value.retry_after is not None and int(answer.value.retry_after) >= 1
            refused.append(biz_id)
        await asyncio.to_thread(healed.postgres.start)
        restarted = time.monotonic()
        assert len(refused) >= 5

        # After the restart: the refused pushes sent again, and new ones, are accepted and arrive,
        # also to a device that connects (and authenticates against the store) only now.
        pusher = Pusher(healed.http_url, app["app_key"], app["app_secret"], connections=4)
        # None of the refused pushes was committed (a 503 means not accepted) …
        assert _sql(healed, "SELECT count(*) FROM messages WHERE app_key = %s", app["app_key"]) == [(0,)]
        # … so sent again (a few of them) after the restart, each is accepted once, as new ones are.
        jobs = [(b, online.device_id) for b in refused[:20]] + [
            ("after", online.device_id),
            ("late", later.device_id),
        ]
        msg_ids = await pusher.push_all(jobs, 60)
        late = Fleet(app["app_key"], [later], healed.mqtt_port)
        await late.start()
        try:
            want = {msg_ids[b] for b, d in jobs if d == online.device_id}
            device = fleet.devices[0]
            await fleet.until(lambda: want <= device.received.keys(), 30, "the pushes after the restart")
            await late.until(
                lambda: msg_ids["late"] in late.devices[0].received, 30, "the late device's push"
            )
            # Each push is there once after dedupe (the bridges, whose leases lapsed meanwhile, took
            # each other over and sent what was not acknowledged yet again: repeats dropped by id).
            assert set(device.received) == want
            print(
                json.dumps(
                    {"refused": len(refused), "resumed_seconds": round(time.monotonic() - restarted, 1)}
                )
            )
        finally:
            await late.stop()
    finally:
        api.close()
        await fleet.stop()


# --- 2. 10,000 pushes, 1,000 devices, a broker, a bridge and a NATS node killed ---------------------


async def test_pushes_through_broker_bridge_and_nats_kills_arrive_exactly_once(healed: Cluster) -> None:
    app, regs = _app(healed, "storm", DEVICES)
    fleet = Fleet(app["app_key"], regs, healed.mqtt_port)
    await fleet.start()
    jobs = [(f"p{i}", regs[i % DEVICES].device_id) for i in range(PUSHES)]
    pusher = Pusher(healed.http_url, app["app_key"], app["app_secret"], connections=32)
    assert healed.nats is not None
    faults = [
        (PUSHES // 4, "broker-2", healed.brokers[1].kill9),
        (PUSHES // 2, "bridge-1", healed.bridges[0].kill9),
        (PUSHES * 3 // 4, "nats-1", healed.nats.nodes[0].kill9),
    ]
    done: list[tuple[str, int]] = []
    before: dict[str, int] = {}

    def inject(accepted: int) -> None:
        while faults and accepted >= faults[0][0]:
            _, name, kill = faults.pop(0)
            if name == "broker-2":
                before.update({d.creds.device_id: d.sessions for d in fleet.devices})
            kill()
            done.append((name, accepted))

    pusher.on_accepted = inject
    try:
        started = time.monotonic()
        msg_ids = await pusher.push_all(jobs, 240)
        pushed = time.monotonic() - started
        assert [name for name, _ in done] == ["broker-2", "bridge-1", "nats-1"]
        sent: dict[str, set[str]] = {}
        for biz_id, device_id in jobs:
            sent.setdefault(device_id, set()).add(msg_ids[biz_id])
        await fleet.until(lambda: not fleet.missing(sent), 120, "every accepted push at its device")
        delivered = time.monotonic() - started
    finally:
        await fleet.stop()

    # Devices were spread over the 3 nodes: the killed node's share came back through HAProxy.
    moved = sum(1 for d in fleet.devices if d.sessions > before[d.creds.device_id])
    assert DEVICES // 6 <= moved <= DEVICES // 2, moved
    # Every accepted msg_id arrived at its device (and only there); none was accepted twice.
    assert len(set(msg_ids.values())) == PUSHES
    ((stored,),) = _sql(healed, "SELECT count(*) FROM messages WHERE app_key = %s", app["app_key"])
    assert stored == PUSHES
    assert all(d.misrouted == [] for d in fleet.devices)
    assert all(set(d.received) == sent[d.creds.device_id] for d in fleet.devices)
    repeats = sum(n - 1 for d in fleet.devices for n in d.received.values())
    print(
        json.dumps(
            {
                "pushes": PUSHES,
                "devices": DEVICES,
                "faults_at": done,
                "moved": moved,
                "retried": pusher.stats.retried,
                "retry_reasons": pusher.stats.statuses,
                "repeats_dropped_by_devices": repeats,
                "push_seconds": round(pushed, 1),
                "all_delivered_seconds": round(delivered, 1),
            }
        )
    )


# --- 5. a task of 100,000 devices, its bridge killed halfway ---------------------------------------


def _task(cluster: Cluster, task_id: str) -> tuple[str, int, str | None, str | None]:
    ((state, targeted, owner, progress),) = _sql(
        cluster, "SELECT state, targeted, lease_owner, progress FROM tasks WHERE task_id = %s", task_id
    )
    return state, int(targeted), owner, progress


def _wait_task(
    cluster: Cluster, task_id: str, until: float, check: Any
) -> tuple[str, int, str | None, str | None]:
    while not check(row := _task(cluster, task_id)):
        assert time.monotonic() < until, f"task {task_id} still {row}"
        time.sleep(0.05)  # polling another process's progress in the store, with a deadline
    return row


def test_task_of_a_bridge_killed_halfway_is_finished_by_the_other_with_exact_progress(
    healed: Cluster,
) -> None:
    started = time.monotonic()
    app, _ = _app(healed, "fleet", 0)
    rows = [{"install_id": f"f{i}", "platform": "android", "tags": ["all"]} for i in range(TASK_DEVICES)]
    assert len(healed.import_devices(app["app_key"], rows)) == TASK_DEVICES
    first, second = healed.bridges
    imported = time.monotonic()
    with PushClient(_bridge_url(healed, 0), app["app_key"], app["app_secret"]) as client:  # bridge 1
        doc = client.push({"target": {"tags": "all"}, "notification": {"title": "t", "body": "b"}})
    task_id, msg_id = doc["task_id"], doc["msg_id"]
    mine, theirs = f"/{first.pid}/", f"/{second.pid}/"

    deadline = time.monotonic() + 240
    _wait_task(healed, task_id, deadline, lambda r: r[1] >= TASK_DEVICES * 2 // 5)
    first.kill9()
    state, at_kill, owner, progress = _task(healed, task_id)
    assert state == "running" and 0 < at_kill < TASK_DEVICES, f"not killed halfway: {at_kill}"
    assert owner is not None and mine in owner  # bridge 1 was walking it
    assert progress is not None  # a checkpoint to resume from

    state, targeted, owner, _ = _wait_task(healed, task_id, deadline, lambda r: r[0] == "done")
    assert owner is not None and theirs in owner  # bridge 2 finished it
    ((deliveries, distinct),) = _sql(
        healed, "SELECT count(*), count(DISTINCT device_id) FROM deliveries WHERE msg_id = %s", msg_id
    )
    assert (targeted, deliveries, distinct) == (TASK_DEVICES,) * 3  # every device once, counted once
    taken = _sql(healed, "SELECT taken_by FROM bridge_leases WHERE owner LIKE %s", f"%{mine}%")
    assert [t for (t,) in taken if t is not None and theirs in t], taken  # bridge 2 took over its lease
    print(
        json.dumps(
            {
                "task_devices": TASK_DEVICES,
                "killed_at": at_kill,
                "import_seconds": round(imported - started, 1),
                "task_seconds": round(time.monotonic() - imported, 1),
            }
        )
    )
