"""``--log-format json`` (docs/operations.md, "Logs"): one JSON object a line, with the ids of
the push path where the logging call knew them."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import pytest

from mqttpush.cli.logs import JsonFormatter
from mqttpush.client import PushClient
from mqttpush.device import DeviceClient
from tests.conftest import ServeProcess, cli, cli_json


def test_a_json_line_carries_the_ids_given_with_extra() -> None:
    record = logging.LogRecord("mqttpush.receipts", logging.INFO, __file__, 1, "got %s", ("it",), None)
    record.msg_id, record.device_id = "m1", "d1"
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "got it" and doc["level"] == "info" and doc["logger"] == "mqttpush.receipts"
    assert (doc["msg_id"], doc["device_id"]) == ("m1", "d1")
    assert "task_id" not in doc and doc["time"].endswith("+00:00")
    try:
        raise ValueError("boom \n with a newline")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(failed)
    assert "\n" not in line and "ValueError" in json.loads(line)["exc_info"]


def test_serve_logs_json_lines_with_msg_id_on_the_receipt_path(tmp_path: Path) -> None:
    data = tmp_path / "data"
    app = cli_json("app", "create", "shop", "--data-dir", str(data))
    server = ServeProcess(data, 0, 0, "--log-format", "json", "--log-level", "info")
    assert server.proc.stderr is not None
    lines: Queue[str] = Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(line) for line in server.proc.stderr or ()], daemon=True
    )
    reader.start()
    seen: list[dict[str, Any]] = []

    def wait_for_line(msg_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except Empty:
                break
            if line.strip():
                seen.append(json.loads(line))  # every line is one JSON object
                if seen[-1].get("msg_id") == msg_id:
                    return seen[-1]
        raise AssertionError(f"no log line with msg_id={msg_id}: {seen}")

    try:
        with PushClient(server.url, app["app_key"]) as c:
            reg = c.register_device("phone-1", "android")
        device = DeviceClient.from_server(server.url, reg["device_id"], reg["device_token"])
        device.connect()
        try:
            device.arrived("unknown0message0id0001")  # the server logs: receipt for unknown delivery
            unknown = wait_for_line("unknown0message0id0001")
        finally:
            device.disconnect()
    finally:
        assert server.stop(signal.SIGTERM) == 0
    reader.join(10)
    while not lines.empty():
        line = lines.get()
        if line.strip():
            seen.append(json.loads(line))
    assert all({"time", "level", "logger", "message"} <= set(d) for d in seen)
    assert unknown["device_id"] == reg["device_id"] and unknown["app_key"] == app["app_key"]
    assert unknown["logger"] == "mqttpush.receipts" and unknown["level"] == "info"
    assert "unknown0message0id0001" in unknown["message"]


@pytest.mark.parametrize("command", ["serve", "broker"])
def test_an_unknown_log_format_is_a_usage_error(command: str, tmp_path: Path) -> None:
    proc = cli(command, "--data-dir", str(tmp_path / "d"), "--log-format", "xml")
    assert proc.returncode == 2
    assert "--log-format" in proc.stderr and "Traceback" not in proc.stderr
