"""MQTT.js (what browsers run) as a device over the WebSocket listener: connect with the device's
token, subscribe to its inbox, receive a push, send the receipt (tests/js/device.mjs)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import pytest

from tests.conftest import Running, _serve

JS = Path(__file__).parent.parent / "js"


@pytest.fixture
def ws_server(tmp_path: Path) -> Iterator[Running]:
    yield from _serve(tmp_path / "data", ws_port=0)


class JsDevice:
    def __init__(self, url: str, device: str, token: str, app: str, ca: str | None = None) -> None:
        """``ca``: a PEM file Node should trust besides its own CAs (for a ``wss://`` url)."""
        self.proc = subprocess.Popen(
            ["node", str(JS / "device.mjs"), url, device, token, app],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=JS,
            env={**os.environ, "NODE_EXTRA_CA_CERTS": ca} if ca else None,
        )
        self.events: Queue[dict[str, Any]] = Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def next(self, timeout: float = 15) -> dict[str, Any]:
        try:
            return self.events.get(timeout=timeout)
        except Empty:
            assert self.proc.stderr is not None
            raise AssertionError(f"no event from MQTT.js; exit={self.proc.poll()}") from None

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(15)


def test_mqttjs_device_over_websocket(ws_server: Running) -> None:
    r = ws_server
    ((device, token),) = r.register()
    port = r.server.broker_node.listener_ports()["ws_port"]
    js = JsDevice(f"ws://127.0.0.1:{port}/mqtt", device, token, r.app_key)
    try:
        assert js.next() == {"event": "connected"}
        assert js.next() == {"event": "subscribed", "granted": [1]}
        msg_id = r.push([device], "hello browser")
        got = js.next()
        assert got == {
            "event": "message",
            "topic": f"mqttpush/{r.app_key}/d/{device}/m/{msg_id}",
            "qos": 1,
            "id": msg_id,
            "title": "hello browser",
        }
        r.wait_state(msg_id, device, "arrived")
    finally:
        js.close()
    assert js.proc.returncode == 0
