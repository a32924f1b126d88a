"""Issue 5, item 14: 10,000 pushes to offline devices while the server is killed with kill -9 at a
random point; after a restart every accepted msg_id reaches its device, and none twice."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import threading
import time
from pathlib import Path

from mqttpush.client import PushClient
from mqttpush.errors import ClientError
from mqttpush.store import Store
from tests.conftest import ServeProcess
from tests.mqtt_raw import RawClient

TOTAL = 10_000
DEVICES = 20


def _pusher(
    url: str,
    key: str,
    secret: str,
    devices: list[str],
    accepted: dict[str, str],
    lock: threading.Lock,
    stop: threading.Event,
    seed: int,
) -> None:
    rng = random.Random(seed)
    with PushClient(url, key, secret, timeout=5) as c:
        while not stop.is_set():
            device = rng.choice(devices)
            try:
                msg_id = c.push({"target": {"devices": [device]}, "notification": {"title": "n"}})["msg_id"]
            except ClientError:
                return  # the server is gone: whatever was not answered was not accepted
            with lock:
                accepted[msg_id] = device
                if len(accepted) >= TOTAL:
                    stop.set()


def _push_until(
    server: ServeProcess,
    key: str,
    secret: str,
    devices: list[str],
    accepted: dict[str, str],
    kill_after: float | None,
) -> None:
    lock, stop = threading.Lock(), threading.Event()
    threads = [
        threading.Thread(target=_pusher, args=(server.url, key, secret, devices, accepted, lock, stop, i))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    if kill_after is not None:
        stop.wait(kill_after)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
    for t in threads:
        t.join(120)


async def _receive(
    port: int, app_key: str, tokens: dict[str, str], expected: dict[str, str]
) -> dict[str, list[str]]:
    by_device: dict[str, set[str]] = {}
    for msg_id, device in expected.items():
        by_device.setdefault(device, set()).add(msg_id)

    async def one(device: str) -> list[str]:
        c, code, _ = await RawClient.connect(port, device, device, tokens[device])
        assert code == 0
        await c.subscribe(f"mqttpush/{app_key}/d/{device}/m/+")
        got: list[str] = []
        want = by_device.get(device, set())
        deadline = time.monotonic() + 60
        while not want <= set(got) and time.monotonic() < deadline:
            p = await c.next_publish(10)
            if p is None:
                break
            if p.payload:
                got.append(json.loads(p.payload)["id"])
        await c.disconnect()
        return got

    results = await asyncio.gather(*(one(d) for d in tokens))
    return dict(zip(tokens, results, strict=True))


def assert_each_once(accepted: dict[str, str], got: dict[str, list[str]], run: str) -> None:
    """Every accepted msg_id reached its device, and none twice."""
    missing = [m for m, d in accepted.items() if m not in got[d]]
    twice = [(d, m) for d, ids in got.items() for m in set(ids) if ids.count(m) > 1]
    assert not missing, f"{run}: {len(missing)} accepted messages lost"
    assert not twice, f"{run}: {len(twice)} delivered twice"


def test_kill_9_during_10000_pushes_loses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = Store(data)
    app = store.apps.create_app("crash")
    devices = store.devices.import_devices(
        app.app_key, [{"install_id": f"i{i}", "platform": "iot"} for i in range(DEVICES)]
    )
    store.close()
    tokens = {d["device_id"]: d["device_token"] for d in devices}
    seed = random.randrange(1 << 30)
    kill_after = random.Random(seed).uniform(0.5, 3.0)

    accepted: dict[str, str] = {}
    server = ServeProcess(data)
    _push_until(server, app.app_key, app.secret, list(tokens), accepted, kill_after)
    assert server.proc.returncode == -signal.SIGKILL
    before_kill = len(accepted)
    assert 0 < before_kill < TOTAL, f"seed={seed}: the kill did not land mid-run"

    server = ServeProcess(data)
    try:
        _push_until(server, app.app_key, app.secret, list(tokens), accepted, None)
        assert len(accepted) >= TOTAL
        got = asyncio.run(_receive(server.mqtt_port, app.app_key, tokens, accepted))
    finally:
        server.stop(signal.SIGTERM)
    assert_each_once(accepted, got, f"seed={seed} kill_after={kill_after:.2f}s")
