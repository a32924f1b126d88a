"""Split mode (issue 4, item 9): ``mqttpush bridge --broker`` against ``mqttpush broker`` and
against mosquitto, as separate processes, with devices on the broker and apps on the bridge's API."""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from queue import Queue
from typing import Any

import pytest

from mqttpush.client import PushClient
from mqttpush.device import DeviceClient
from mqttpush.errors import ClientError
from mqttpush.store import Store


class Proc:
    """An mqttpush command that prints a JSON ready line, run as its own process."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mqttpush", *args, "--json", "--log-level", "warning"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(
                f"{args[0]} did not start: {self.proc.stderr.read() if self.proc.stderr else ''}"
            )
        self.ready: dict[str, Any] = json.loads(line)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def _bridge(data: Path, *broker: str) -> Proc:
    """``mqttpush bridge`` on ``data``, its HTTP API on an ephemeral port; ``broker``: the flags for its broker."""
    return Proc("bridge", *broker, "--data-dir", str(data), "--http-port", "0")


def _poll(ready: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Readiness poll with a deadline (for an outside process whose state we cannot await)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _device_round_trip(url: str, app_key: str, app_secret: str) -> None:
    """Register, receive a unicast and a tag push over the broker, acknowledge, see `arrived`."""
    with PushClient(url, app_key, app_secret) as api:
        reg = api.register_device("phone-1", "android")
        device, token = reg["device_id"], reg["device_token"]
        api.update_tags(device, add=["news"])
        got: Queue[dict[str, Any]] = Queue()

        def connect() -> DeviceClient | None:
            client = DeviceClient.from_server(url, device, token, on_message=got.put)
            try:
                client.connect(timeout=5)
            except ClientError:
                return None  # mosquitto has not reloaded its password file yet
            return client

        holder: list[DeviceClient] = []
        _poll(lambda: bool(holder.append(c) or True) if (c := connect()) else False, "the device to log in")
        client = holder[0]
        try:
            msg_id = api.push({"target": {"devices": [device]}, "notification": {"title": "split"}})["msg_id"]
            task = api.push({"target": {"tags": "news"}, "notification": {"title": "tagged"}})
            seen = {got.get(timeout=15)["id"], got.get(timeout=15)["id"]}
            assert seen == {msg_id, task["msg_id"]}

            def arrived() -> bool:
                return all(
                    d["state"] == "arrived"
                    for m in (msg_id, task["msg_id"])
                    for d in api.message(m)["deliveries"]
                )

            _poll(arrived, "both deliveries to be arrived")
            _poll(lambda: bool(api.device(device)["online"]), "presence from the s topic")
        finally:
            client.disconnect()
        _poll(lambda: not api.device(device)["online"], "presence offline")
        # Acknowledged messages were cleared from the broker: a new session receives nothing.
        again: Queue[dict[str, Any]] = Queue()
        client = DeviceClient.from_server(url, device, token, on_message=again.put)
        client.connect()
        marker = api.push({"target": {"devices": [device]}, "notification": {"title": "marker"}})["msg_id"]
        assert again.get(timeout=15)["id"] == marker
        assert again.empty()
        client.disconnect()


def test_bridge_against_our_own_broker(tmp_path: Path) -> None:
    data = tmp_path / "data"
    app = Store(data).apps.create_app("split")
    broker = Proc("broker", "--data-dir", str(data), "--mqtt-port", "0")
    try:
        bridge = _bridge(data, "--broker", f"mqtt://127.0.0.1:{broker.ready['mqtt_port']}")
        try:
            _device_round_trip(bridge.ready["http_url"], app.app_key, app.secret)
        finally:
            assert bridge.stop() == 0
    finally:
        assert broker.stop() == 0


class _Mosquitto:
    """``mosquitto -c CONF`` as docs/split.md starts it, restartable on its port."""

    def __init__(self, conf: Path, port: int, pid_file: Path) -> None:
        self.conf, self.port, self.pid_file = conf, port, pid_file
        self.log = conf.parent / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stderr=log)
        self.proc = proc

        def listening() -> bool:
            assert proc.poll() is None, f"mosquitto exited {proc.returncode}: {self.log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return False
            return self.pid_file.exists() and self.pid_file.read_text().strip() == str(proc.pid)

        _poll(listening, "mosquitto to listen and write its pid file")

    def bridge_flags(self) -> tuple[str, ...]:
        """How ``mqttpush bridge`` is pointed at this mosquitto: its URL, its files, its pid file."""
        return (
            "--broker",
            f"mqtt://127.0.0.1:{self.port}",
            "--mosquitto-dir",
            str(self.conf.parent),
            "--mosquitto-pid-file",
            str(self.pid_file),
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


def _mosquitto_config(data: Path, out: Path, port: int, pid_file: Path, *extra: str) -> Path:
    """``mqttpush mosquitto-config`` as docs/split.md gives it (no ``--user`` unless in ``extra``)."""
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "mqttpush",
            "mosquitto-config",
            "--data-dir",
            str(data),
            "--out",
            str(out),
            "--mqtt-port",
            str(port),
            "--pid-file",
            str(pid_file),
            *extra,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert made.returncode == 0, made.stderr
    return Path(json.loads(made.stdout)["config"])


@pytest.fixture
def mosquitto_dir(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    folder = tmp_path / "mosquitto"
    folder.mkdir()
    yield folder, _free_port()


def test_bridge_against_mosquitto_keeps_auth_and_acl(tmp_path: Path, mosquitto_dir: tuple[Path, int]) -> None:
    folder, port = mosquitto_dir
    data = tmp_path / "data"
    app = Store(data).apps.create_app("split")
    pid_file = folder / "mosquitto.pid"
    user = pwd.getpwuid(os.getuid()).pw_name
    mosq = _Mosquitto(_mosquitto_config(data, folder, port, pid_file, "--user", user), port, pid_file)
    try:
        mosq.start()
        bridge = _bridge(data, *mosq.bridge_flags())
        try:
            _device_round_trip(bridge.ready["http_url"], app.app_key, app.secret)
            # An unknown device and a wrong token are refused by mosquitto itself.
            with PushClient(bridge.ready["http_url"], app.app_key) as api:
                reg = api.register_device("phone-2", "ios")
            wrong = DeviceClient(
                host="127.0.0.1",
                port=port,
                app_key=app.app_key,
                device_id=reg["device_id"],
                device_token=reg["device_token"] + "x",
            )
            with pytest.raises(ClientError):
                wrong.connect(timeout=5)
        finally:
            assert bridge.stop() == 0
    finally:
        mosq.stop()


def test_bridge_refuses_a_bad_broker_url(tmp_path: Path) -> None:
    for url in ("http://127.0.0.1:1", "mqtt://127.0.0.1:1"):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mqttpush",
                "bridge",
                "--broker",
                url,
                "--data-dir",
                str(tmp_path / "d"),
                "--http-port",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2, proc.stderr
        assert "error:" in proc.stderr and "Traceback" not in proc.stderr
