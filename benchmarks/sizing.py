"""Small-scale measurements behind the sizing model of docs/scale-out.md.

    .venv/bin/python -m benchmarks.sizing [--subjects 100000] [--pushes 2000]

Prints a table, then one line of JSON. What it measures, on this machine:

- **NATS interest per device**: a broker node subscribes one subject per connected device
  (``mqttpush.dev.<app>.<device>``). nats-server's RSS and the subscribing client's RSS are read
  before and after ``--subjects`` subscriptions, and the time the server takes to learn them.
- **PostgreSQL work per push**: ``--pushes`` single-device pushes through the store's own calls
  (accept, publish, arrived receipt), counting rows inserted/updated/deleted
  (``pg_stat_user_tables``) and the database's growth per push.

- **Broker node memory per subscribed device**: ``--devices`` lean MQTT devices connect and
  subscribe their inbox on ``mqttpush broker`` alone, then on ``mqttpush broker --cluster`` (one
  nats-server); the broker's RSS before and after each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.mqtt import open_connection
from benchmarks.procs import _read_line, free_port, make_fleet, rss_kb, spawn, stop


def _nats_interest(subjects: int) -> dict[str, Any]:
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        server = subprocess.Popen(
            ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-l", str(Path(d) / "nats.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            return asyncio.run(_subscribe(server.pid, port, subjects))
        finally:
            server.terminate()
            server.wait(10)


async def _subscribe(server_pid: int, port: int, subjects: int) -> dict[str, Any]:
    import nats

    async def quiet(_exc: Exception) -> None:
        return None

    deadline = time.monotonic() + 10
    while True:
        try:
            nc = await nats.connect(
                f"nats://127.0.0.1:{port}", connect_timeout=1, allow_reconnect=False, error_cb=quiet
            )
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)  # the server was just started
    await nc.flush()
    server_before, client_before = rss_kb(server_pid), rss_kb(os.getpid())

    async def ignore(_msg: Any) -> None:
        return None

    started = time.perf_counter()
    subs = [await nc.subscribe(f"mqttpush.dev.app1.d{i:07d}", cb=ignore) for i in range(subjects)]
    await nc.flush(timeout=60)
    learned = time.perf_counter() - started
    server_after, client_after = rss_kb(server_pid), rss_kb(os.getpid())
    assert len(subs) == subjects
    await nc.close()
    return {
        "subjects": subjects,
        "server_bytes_per_subject": (server_after - server_before) * 1024 / subjects,
        "client_bytes_per_subject": (client_after - client_before) * 1024 / subjects,
        "subscribe_seconds": learned,
    }


def _pg_per_push(pushes: int) -> dict[str, Any]:
    import psycopg

    from mqttpush.models import DeliveryState, ReceiptEvent
    from mqttpush.store import Store
    from tests.pg import pg_server

    with pg_server() as server, tempfile.TemporaryDirectory() as d:
        url = server.fresh_url()
        store = Store(d, url=url)
        app = store.apps.create_app("sizing")
        reg = store.devices.register_device(app.app_key, "i-1", "android")
        device = reg.device_id

        def counters() -> tuple[int, int, int, int]:
            with psycopg.connect(url) as conn:
                conn.execute("SELECT pg_stat_clear_snapshot()")
                row = conn.execute(
                    "SELECT sum(n_tup_ins), sum(n_tup_upd), sum(n_tup_del) FROM pg_stat_user_tables"
                    " WHERE schemaname = current_schema()"
                ).fetchone()
                size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            assert row is not None and size is not None
            return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0), int(size[0])

        store.close()  # a backend's table statistics reach pg_stat_user_tables when it ends
        before = counters()
        store = Store(d, url=url)
        started = time.perf_counter()
        envelope = b'{"title":"t"}'
        for i in range(pushes):
            msg_id = f"m{i:08d}"
            store.messages.accept_message(
                msg_id=msg_id,
                app_key=app.app_key,
                kind="devices",
                target={"devices": [device]},
                envelope=envelope,
                policy={},
                expires_at=time.time() + 3600,
                device_ids=[device],
            )
            store.apps.use_nonce(app.app_key, f"nonce-{i:012d}", 600)
            store.messages.transition([(msg_id, device)], DeliveryState.PUBLISHED)
            store.messages.apply_receipts([(app.app_key, device, msg_id, ReceiptEvent.ARRIVED)])
        seconds = time.perf_counter() - started
        store.close()
        after = counters()
    ins, upd, dele, size = (a - b for a, b in zip(after, before, strict=True))
    return {
        "pushes": pushes,
        "rows_inserted_per_push": ins / pushes,
        "rows_updated_per_push": upd / pushes,
        "rows_deleted_per_push": dele / pushes,
        "bytes_per_push": size / pushes,
        "pushes_per_second_one_connection": pushes / seconds,
    }


def _nats_server(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-l", str(directory / "nats.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, port


def _node_memory(devices: int) -> dict[str, Any]:
    """RSS of a broker before and after ``devices`` devices connect and subscribe, alone and as a
    cluster node."""
    out: dict[str, Any] = {"devices": devices}
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        fleet = make_fleet(root / "data", devices)
        nats_proc, nats_port = _nats_server(root)
        try:
            for mode, extra in (
                ("single", []),
                ("cluster", ["--cluster", f"nats://127.0.0.1:{nats_port}", "--node-id", "n1"]),
            ):
                cmd = [sys.executable, "-m", "mqttpush", "broker", "--data-dir", str(fleet.data_dir)]
                cmd += ["--host", "127.0.0.1", "--mqtt-port", "0", "--json", "--log-level", "warning", *extra]
                proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                try:
                    line = _read_line(proc, 60)
                    if not line:
                        raise RuntimeError(f"mqttpush broker ({mode}) did not start")
                    port = int(json.loads(line)["mqtt_port"])
                    before = rss_kb(proc.pid)
                    after = asyncio.run(_connect_all(port, fleet.app_key, fleet.devices, proc.pid))
                    out[f"{mode}_bytes_per_device"] = (after - before) * 1024 / devices
                finally:
                    stop(proc)
        finally:
            nats_proc.terminate()
            nats_proc.wait(10)
    return out


async def _connect_all(port: int, app_key: str, devices: list[Any], pid: int) -> int:
    conns = []
    for dev in devices:
        conn = await open_connection("127.0.0.1", port, dev.device_id, dev.device_id, dev.token)
        await conn.subscribe([f"mqttpush/{app_key}/d/{dev.device_id}/m/+"])
        conns.append(conn)
    await asyncio.sleep(1.0)  # let the broker settle its per-connection state before reading RSS
    rss = rss_kb(pid)
    for conn in conns:
        conn.disconnect()
    return rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sizing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=100_000)
    parser.add_argument("--pushes", type=int, default=2_000)
    parser.add_argument("--devices", type=int, default=2_000)
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nats_figures = _nats_interest(args.subjects)
    pg_figures = _pg_per_push(args.pushes)
    node_figures = _node_memory(args.devices)
    rows = [
        (
            "broker memory per subscribed device, single node",
            f"{node_figures['single_bytes_per_device'] / 1024:.1f} KiB",
        ),
        (
            "broker memory per subscribed device, cluster node",
            f"{node_figures['cluster_bytes_per_device'] / 1024:.1f} KiB",
        ),
        ("NATS server memory per device subject", f"{nats_figures['server_bytes_per_subject']:.0f} B"),
        (
            "broker node (nats-py) memory per device subject",
            f"{nats_figures['client_bytes_per_subject']:.0f} B",
        ),
        (f"{args.subjects:,} subscriptions learned in", f"{nats_figures['subscribe_seconds']:.2f} s"),
        (
            "PostgreSQL rows inserted per push (signed: nonce included)",
            f"{pg_figures['rows_inserted_per_push']:.2f}",
        ),
        ("PostgreSQL rows updated per push", f"{pg_figures['rows_updated_per_push']:.2f}"),
        ("PostgreSQL bytes per push (table + index growth)", f"{pg_figures['bytes_per_push']:.0f} B"),
        (
            "pushes/s through one store connection (accept, publish, arrived)",
            f"{pg_figures['pushes_per_second_one_connection']:.0f}",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(json.dumps({"nats": nats_figures, "postgresql": pg_figures, "broker_node": node_figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
