"""Two bridges over one SQLite store (docs/scale-out.md, "Leases"): a task of 30,000 devices
started on bridge 1, which is killed (-9) halfway, is finished by bridge 2 with exact progress."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path

from mqttpush.client import PushClient
from mqttpush.store.store import DB_FILE, Store
from tests.cluster.harness import Proc

DEVICES = 30_000
LEASE = 1.0


def _mqttpush(*args: str) -> list[str]:
    return [sys.executable, "-m", "mqttpush", *args]


def _task_row(data_dir: Path, task_id: str) -> tuple[str, int, str | None, str | None]:
    conn = sqlite3.connect(data_dir / DB_FILE, timeout=30)
    try:
        row = conn.execute(
            "SELECT state, targeted, lease_owner, progress FROM tasks WHERE task_id = ?", (task_id,)
        ).fetchone()
        return row[0], int(row[1]), row[2], row[3]
    finally:
        conn.close()


def _wait_task(
    data_dir: Path, task_id: str, until: float, done: bool
) -> tuple[str, int, str | None, str | None]:
    while True:
        row = _task_row(data_dir, task_id)
        if (row[0] == "done") if done else row[1] >= DEVICES // 5:
            return row
        assert time.monotonic() < until, f"task {task_id} still {row}"
        time.sleep(0.02)  # polling another process's progress in the store, with a deadline


def test_a_task_of_a_killed_bridge_is_finished_by_the_other_with_exact_progress(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = Store(data_dir)
    app = store.apps.create_app("fleet")
    rows = [{"install_id": f"i{i}", "platform": "android", "tags": ["all"]} for i in range(DEVICES)]
    for i in range(0, DEVICES, 20_000):
        store.devices.import_devices(app.app_key, rows[i : i + 20_000])
    secret = store.apps.get_app(app.app_key)
    store.close()
    assert secret is not None

    broker = Proc(
        "broker",
        _mqttpush("broker", "--data-dir", str(data_dir), "--mqtt-port", "0", "--json"),
        tmp_path / "broker.log",
    )
    broker.start(json_ready=True)
    broker_url = f"mqtt://127.0.0.1:{broker.ready['mqtt_port']}"
    first = Proc(
        "bridge-1",
        _mqttpush(
            "bridge",
            "--broker",
            broker_url,
            "--data-dir",
            str(data_dir),
            "--http-port",
            "0",
            "--lease-seconds",
            str(LEASE),
            "--json",
        ),
        tmp_path / "bridge-1.log",
    )
    second = Proc(
        "bridge-2",
        [sys.executable, "-m", "tests.cluster.second_bridge", str(data_dir), broker_url, str(LEASE)],
        tmp_path / "bridge-2.log",
    )
    try:
        first.start(json_ready=True)
        second.start(json_ready=True)
        with PushClient(f"http://127.0.0.1:{first.ready['http_port']}", app.app_key, secret.secret) as client:
            task_id = client.push({"target": {"tags": "all"}, "notification": {"title": "t", "body": "b"}})[
                "task_id"
            ]

        deadline = time.monotonic() + 120
        _wait_task(data_dir, task_id, deadline, done=False)
        first.kill9()
        at_kill = _task_row(data_dir, task_id)
        assert at_kill[0] == "running" and 0 < at_kill[1] < DEVICES, f"not killed halfway: {at_kill}"
        assert at_kill[3] is not None  # a checkpoint to resume from

        _, targeted, owner, _ = _wait_task(data_dir, task_id, deadline, done=True)
        assert owner == second.ready["owner"]  # bridge 2 finished it
        conn = sqlite3.connect(data_dir / DB_FILE, timeout=30)
        try:
            msg_id = conn.execute("SELECT msg_id FROM tasks WHERE task_id = ?", (task_id,)).fetchone()[0]
            deliveries = conn.execute(
                "SELECT count(*) FROM deliveries WHERE msg_id = ?", (msg_id,)
            ).fetchone()[0]
            taken = conn.execute(
                "SELECT count(*) FROM bridge_leases WHERE taken_by = ?", (second.ready["owner"],)
            ).fetchone()[0]
        finally:
            conn.close()
        assert (targeted, deliveries) == (DEVICES, DEVICES)  # every device once, counted once
        assert taken == 1  # bridge 2 took over bridge 1's lease
    finally:
        for proc in (first, second, broker):
            proc.stop()
    log = (tmp_path / "bridge-2.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    print(json.dumps({"killed_at": at_kill[1]}))
