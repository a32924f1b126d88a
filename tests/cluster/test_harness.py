"""The cluster harness itself (tests/cluster/harness.py): NATS nodes and HAProxy as the cluster
tests and scripts/cluster use them, and scripts/cluster's ready line and clean stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psycopg

from mqttpush.client import PushClient
from tests.cluster.conftest import Postgres
from tests.cluster.harness import Nats, Proc, free_port, haproxy_config, wait_port, which
from tests.conftest import cli_json

ROOT = Path(__file__).resolve().parents[2]


def _nats_info(port: int) -> bytes:
    """The first bytes a NATS node sends (``INFO ``); b"" if the connection fails."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(2)
            return s.recv(5)
    except OSError:
        return b""


def test_haproxy_takes_a_killed_node_out_and_back_in(tmp_path: Path) -> None:
    """Three NATS nodes as TCP backends: after a kill -9 every new connection through HAProxy
    reaches a live node again within 3 s (checks every 200 ms); the node restarts on its port."""
    nats = Nats(tmp_path)
    front = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        haproxy_config(front, free_port(), nats.ports, []).replace("frontend http", "#").split("#")[0]
    )
    haproxy = Proc("haproxy", [which("haproxy"), "-f", str(cfg), "-db"], tmp_path / "haproxy.log")
    try:
        nats.start(time.monotonic() + 20)
        haproxy.start()
        wait_port(front, time.monotonic() + 20, haproxy.proc)
        assert _nats_info(front) == b"INFO "
        nats.nodes[1].kill9()
        deadline = time.monotonic() + 3.0
        while True:  # until the health check has seen it (inter 200ms, fall 1)
            replies = [_nats_info(front) for _ in range(6)]
            if all(r == b"INFO " for r in replies):
                break
            assert time.monotonic() < deadline, replies
        nats.restart(1, time.monotonic() + 20)
        assert _nats_info(nats.ports[1]) == b"INFO "
    finally:
        haproxy.stop()
        for node in nats.nodes:
            node.stop()
    assert not any(n.alive for n in nats.nodes) and not haproxy.alive


def test_fresh_databases_are_separate(postgres: Postgres) -> None:
    first, second = postgres.fresh_database(), postgres.fresh_database()
    with psycopg.connect(first, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
    with psycopg.connect(second, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 't'").fetchone() == (0,)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_scripts_cluster_prints_ready_and_leaves_no_process_behind() -> None:
    proc = subprocess.Popen([str(ROOT / "scripts" / "cluster"), "--json"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready" and ready["mqtt_url"].startswith("mqtt://127.0.0.1:")
        assert ready["http_url"].startswith("http://127.0.0.1:") and ready["store"].startswith(
            "postgresql://"
        )
        assert len(ready["brokers"]) == 3 and len(ready["bridges"]) == 2 and len(ready["nats"]) == 3
        pids = [b["pid"] for b in ready["brokers"] + ready["bridges"] + ready["nats"]]
        pids += [ready["postgres"]["pid"], ready["haproxy"]["pid"]]
        assert not any(_gone(p) for p in pids)
        # An app made by a local admin command works through the bridges at once: every process
        # opens the secrets it sealed (one master key across the cluster).
        app = cli_json("app", "create", "h", "--store", ready["store"], "--data-dir", ready["data_dir"])
        with PushClient(ready["http_url"], app["app_key"], app["app_secret"]) as client:
            doc = client.push({"target": {"broadcast": True}, "notification": {"title": "t", "body": "b"}})
        assert doc["msg_id"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert all(_gone(p) for p in pids), [p for p in pids if not _gone(p)]
