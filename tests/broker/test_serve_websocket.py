"""WebSocket and secure WebSocket devices against ``mqttpush serve`` started as an operator starts it
(issue 13): a separate process on uvloop, configured by flags, ports from its ready line. The
in-process fixtures once ran the broker on asyncio's loop only, where an isinstance check on
asyncio's transport class held; under ``serve`` every WebSocket handshake failed."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from mqttpush.client import PushClient
from mqttpush.store import Store
from tests.broker.test_listeners import Device
from tests.broker.test_mqttjs import JsDevice
from tests.conftest import ServeProcess
from tests.fakes.tls import make_ca


@dataclass
class Served:
    process: ServeProcess
    app_key: str
    app_secret: str
    ca: str

    def register(self, install: str) -> tuple[str, str]:
        with PushClient(self.process.url, self.app_key) as c:
            reg = c.register_device(install, "web")
        return reg["device_id"], reg["device_token"]

    def push(self, device: str, title: str) -> str:
        with PushClient(self.process.url, self.app_key, self.app_secret) as c:
            doc = c.push({"target": {"devices": [device]}, "notification": {"title": title, "body": "b"}})
        return str(doc["msg_id"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("serve-ws")
    ca, cert, key = make_ca(base / "certs")
    data = base / "data"
    app = Store(data).apps.create_app("browsers")
    process = ServeProcess(
        data, 0, 0, "--ws-port", "0", "--wss-port", "0", "--tls-cert", cert, "--tls-key", key
    )
    try:
        assert process.ready["event"] == "ready"
        yield Served(process, app.app_key, app.secret, ca)
    finally:
        assert process.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("listener", ["ws", "wss"])
def test_paho_over_websocket_gets_its_push(served: Served, listener: str) -> None:
    device, token = served.register(f"paho-{listener}")
    port = served.process.ready[f"{listener}_port"]
    ca = served.ca if listener == "wss" else None
    with Device(port, device, token, "websockets", ca) as d:
        d.c.subscribe(f"mqttpush/{served.app_key}/d/{device}/m/+", qos=1)
        assert d.subscribed.wait(10), "no SUBACK: the WebSocket handshake or CONNECT failed"
        assert d.connected == [0]
        msg_id = served.push(device, f"over {listener}")
        assert d.got.wait(10)
        envelope = json.loads(d.messages[0].payload)
        assert (envelope["id"], envelope["title"]) == (msg_id, f"over {listener}")
        receipt = d.c.publish(
            f"mqttpush/{served.app_key}/d/{device}/r", json.dumps({"id": msg_id, "event": "arrived"}), qos=1
        )
        receipt.wait_for_publish(10)  # PUBACK: the broker took the receipt


@pytest.mark.parametrize("listener", ["ws", "wss"])
def test_mqttjs_over_websocket_gets_its_push(served: Served, listener: str) -> None:
    device, token = served.register(f"mqttjs-{listener}")
    port = served.process.ready[f"{listener}_port"]
    ca = served.ca if listener == "wss" else None
    js = JsDevice(f"{listener}://127.0.0.1:{port}/mqtt", device, token, served.app_key, ca)
    try:
        assert js.next() == {"event": "connected"}
        assert js.next() == {"event": "subscribed", "granted": [1]}
        msg_id = served.push(device, f"browser over {listener}")
        assert js.next() == {
            "event": "message",
            "topic": f"mqttpush/{served.app_key}/d/{device}/m/{msg_id}",
            "qos": 1,
            "id": msg_id,
            "title": f"browser over {listener}",
        }
    finally:
        js.close()
    assert js.proc.returncode == 0
