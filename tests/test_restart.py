"""Restart safety (issue 3, item 9): an accepted push survives SIGTERM and kill -9 of the server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import pytest

from mqttpush.client import PushClient
from mqttpush.device import DeviceClient
from mqttpush.store import Store
from tests.conftest import ServeProcess


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


def _listen(url: str, device: str, token: str) -> tuple[DeviceClient, Queue[dict[str, Any]]]:
    got: Queue[dict[str, Any]] = Queue()
    client = DeviceClient.from_server(url, device, token, on_message=got.put)
    client.connect()
    return client, got


def _drain(q: Queue[dict[str, Any]], until: set[str], timeout: float = 20) -> list[str]:
    seen: list[str] = []
    while not until <= set(seen):
        try:
            seen.append(q.get(timeout=timeout)["id"])
        except Empty:
            raise AssertionError(f"missing {until - set(seen)}") from None
    return seen


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_accepted_push_survives_server_death(data_dir: Path, sig: int) -> None:
    app = Store(data_dir).apps.create_app("restart")
    server = ServeProcess(data_dir)
    with PushClient(server.url, app.app_key, app.secret) as c:
        reg = c.register_device("phone", "android")
        device = reg["device_id"]
        msg_ids = [
            c.push({"target": {"devices": [device]}, "notification": {"title": f"n{i}"}})["msg_id"]
            for i in range(20)
        ]
    code = server.stop(sig)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0)

    server = ServeProcess(data_dir)
    try:
        client, got = _listen(server.url, device, reg["device_token"])
        seen = _drain(got, set(msg_ids))
        client.disconnect()
        assert sorted(seen) == sorted(msg_ids)  # each exactly once at app level
        with PushClient(server.url, app.app_key, app.secret) as c:
            for m in msg_ids:
                states = [d["state"] for d in c.message(m)["deliveries"]]
                assert states[0] in ("published", "arrived")
    finally:
        server.stop(signal.SIGTERM)


def test_sigterm_shuts_down_cleanly_and_port_is_reusable(data_dir: Path) -> None:
    Store(data_dir).apps.create_app("x")
    first = ServeProcess(data_dir)
    ports = (first.mqtt_port, first.http_port)
    assert first.stop(signal.SIGTERM) == 0
    second = ServeProcess(data_dir, *ports)  # same ports again: nothing left bound
    assert (second.mqtt_port, second.http_port) == ports
    assert second.stop(signal.SIGINT) == 0


def test_serve_refuses_a_busy_port_with_a_clear_error(data_dir: Path) -> None:
    first = ServeProcess(data_dir)
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mqttpush",
                "serve",
                "--data-dir",
                str(data_dir.parent / "second"),  # its own data dir: the port, not the lock, refuses it
                "--mqtt-port",
                str(first.mqtt_port),
                "--http-port",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2
        assert "error:" in proc.stderr and "Traceback" not in proc.stderr
        assert "[data_dir_locked]" not in proc.stderr
    finally:
        first.stop(signal.SIGTERM)
    assert os.path.exists(data_dir / "mqttpush.db")


def test_biz_id_survives_a_restart(data_dir: Path) -> None:
    app = Store(data_dir).apps.create_app("idem")
    server = ServeProcess(data_dir)
    request = {"notification": {"title": "once"}, "policy": {"biz_id": "invoice-7-paid"}}
    with PushClient(server.url, app.app_key, app.secret) as c:
        reg = c.register_device("phone", "android")
        first = c.push(request | {"target": {"devices": [reg["device_id"]]}})
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    server = ServeProcess(data_dir)
    try:
        with PushClient(server.url, app.app_key, app.secret) as c:
            again = c.push(request | {"target": {"devices": [reg["device_id"]]}})
        assert again == first
        client, got = _listen(server.url, reg["device_id"], reg["device_token"])
        assert _drain(got, {first["msg_id"]}) == [first["msg_id"]]
        client.disconnect()
        assert len(Store(data_dir).messages.list_messages(app.app_key, None, 10)) == 1
    finally:
        server.stop(signal.SIGTERM)
