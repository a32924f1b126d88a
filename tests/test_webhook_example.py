"""examples/webhook_receiver.py runs as written: it prints the events of a real push (a device
acknowledging over MQTT) and refuses a POST whose signature does not hold."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Empty, Queue

import httpx

from bridge.webhooks import signature
from mqttpush.device import DeviceClient
from tests.conftest import Running

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "webhook_receiver.py"


def _lines(proc: subprocess.Popen[str]) -> Queue[str]:
    lines: Queue[str] = Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_example_receiver_prints_verified_events(running: Running, tmp_path: Path) -> None:
    r = running
    secret_file = tmp_path / "hook.secret"
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--port", "0", "--secret-file", str(secret_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _lines(proc)
        first = lines.get(timeout=20)
        assert first.startswith("listening on http://127.0.0.1:"), first
        url = first.split()[-1]

        unsigned = httpx.post(url, content=b"[]", headers={"X-MQTTPush-Timestamp": "1"}, timeout=10)
        assert unsigned.status_code == 503  # no secret yet: nothing is accepted

        with r.client() as c:
            hook = c.add_webhook(url, ["delivery.arrived", "delivery.opened"])
        secret_file.write_text(hook["secret"] + "\n")

        ts = str(int(time.time()))
        forged = b'[{"type": "delivery.arrived"}]'
        headers = {
            "X-MQTTPush-Timestamp": ts,
            "X-MQTTPush-Signature": signature("not-the-secret", ts, forged),
        }
        assert httpx.post(url, content=forged, headers=headers, timeout=10).status_code == 401

        ((device_id, token),) = r.register(1)
        with DeviceClient.from_server(r.url, device_id, token):
            msg_id = r.push([device_id])
            try:
                event = json.loads(lines.get(timeout=30))
            except Empty:
                raise AssertionError("the example printed no event") from None
        assert (event["type"], event["delivery_id"]) == ("delivery.arrived", f"{msg_id}:{device_id}")
        assert lines.empty()  # the forged POST printed nothing
    finally:
        proc.terminate()
        proc.wait(10)
