"""The cluster's message path against the single-node one, on this machine.

    .venv/bin/python -m benchmarks.cluster [--devices 1000] [--pushes 5000] [--broadcasts 20]

Two setups over the same PostgreSQL store (tests/pg.py), the same lean devices and pushers
(tests/cluster/fleet.py: raw asyncio MQTT devices that acknowledge each message with an
``arrived`` receipt; signed HTTP pushes, 64 in flight):

- **single**: ``mqttpush serve --store postgresql://…``, one process (broker, bridge and API);
- **cluster**: tests/cluster/harness.py, 3 NATS servers, 3 broker nodes, 2 bridges, HAProxy in
  front of the bridges (devices connect to the nodes directly, an equal share each).

For each: **unicast** (``--pushes`` single-device pushes spread over the devices) and
**broadcast** (``--broadcasts`` pushes to every device), timed from the first push to the last
message at its device. Throughput is messages delivered per second in all and per broker node;
CPU is each process's user + system seconds over the run (PostgreSQL: the server and its
backends), divided by the messages delivered. Prints a table, then one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.procs import cpu_seconds, raise_nofile_limit
from tests.cluster.fleet import Credentials, Fleet, Pusher
from tests.cluster.harness import Cluster
from tests.pg import pg_server

IN_FLIGHT = 64


def _tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its children (PostgreSQL's backends, serve's broker process)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if int(entry) == root or ppid == root:
                total += cpu_seconds(int(entry))
        except (OSError, ValueError):
            continue
    return total


class Setup:
    """What runs, and where: the URLs, the node ports and each process's CPU counter."""

    def __init__(
        self, name: str, http_url: str, node_ports: list[int], cpu: dict[str, Callable[[], float]]
    ) -> None:
        self.name = name
        self.http_url = http_url
        self.node_ports = node_ports
        self.cpu = {**cpu, "load generator": lambda: cpu_seconds(os.getpid())}

    def snapshot(self) -> dict[str, float]:
        return {name: read() for name, read in self.cpu.items()}


async def _measure(
    setup: Setup, app: dict[str, str], devices: list[Credentials], pushes: int, broadcasts: int
) -> dict[str, Any]:
    fleet = Fleet(app["app_key"], devices, setup.node_ports[0])
    for i, device in enumerate(fleet.devices):
        device.port = setup.node_ports[i % len(setup.node_ports)]
    await fleet.start(timeout=120)
    node_of = {d.creds.device_id: setup.node_ports.index(d.port) for d in fleet.devices}
    out: dict[str, Any] = {}
    try:
        for kind in ("unicast", "broadcast"):
            pusher = Pusher(setup.http_url, app["app_key"], app["app_secret"], connections=IN_FLIGHT)
            if kind == "unicast":
                jobs = [(f"u{i}", devices[i % len(devices)].device_id) for i in range(pushes)]
            else:
                jobs = [(f"b{i}", "") for i in range(broadcasts)]
                pusher.body = lambda biz_id, _device: {  # type: ignore[method-assign]
                    "target": {"broadcast": True},
                    "notification": {"title": biz_id, "body": "b"},
                    "policy": {"biz_id": biz_id},
                }
            before = {d.creds.device_id: len(d.received) for d in fleet.devices}
            cpu0, started = setup.snapshot(), time.monotonic()
            msg_ids = await pusher.push_all(jobs, 600)
            accepted = time.monotonic() - started
            if kind == "unicast":
                want: dict[str, set[str]] = {}
                for biz_id, device_id in jobs:
                    want.setdefault(device_id, set()).add(msg_ids[biz_id])
            else:
                want = {d.creds.device_id: set(msg_ids.values()) for d in fleet.devices}
            await fleet.until(lambda want=want: not fleet.missing(want), 600, f"every {kind} message")
            seconds = time.monotonic() - started
            cpu1 = setup.snapshot()
            delivered = sum(len(d.received) - before[d.creds.device_id] for d in fleet.devices)
            per_node = [0] * len(setup.node_ports)
            for d in fleet.devices:
                per_node[node_of[d.creds.device_id]] += len(d.received) - before[d.creds.device_id]
            cpu = {name: cpu1[name] - cpu0[name] for name in cpu0}
            out[kind] = {
                "pushes": len(jobs),
                "delivered": delivered,
                "seconds": round(seconds, 2),
                "accepted_per_second": round(len(jobs) / accepted, 1),
                "delivered_per_second": round(delivered / seconds, 1),
                "delivered_per_second_per_node": [round(n / seconds, 1) for n in per_node],
                "cpu_seconds": {name: round(v, 2) for name, v in cpu.items()},
                "cpu_ms_per_message": round(sum(cpu.values()) * 1000 / delivered, 3),
                "cpu_ms_per_message_by_process": {
                    name: round(v * 1000 / delivered, 3) for name, v in cpu.items()
                },
                "retried": pusher.stats.retried,
            }
    finally:
        await fleet.stop()
    return out


def _import(run: Callable[..., Any], n: int) -> tuple[dict[str, str], list[Credentials]]:
    app = run("app", "create", "bench")
    rows = "".join(json.dumps({"install_id": f"b{i}", "platform": "android"}) + "\n" for i in range(n))
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl") as f:
        f.write(rows)
        f.flush()
        devices = run("device", "import", f.name, "--app-key", app["app_key"])["devices"]
    return app, [Credentials(d["device_id"], d["device_token"]) for d in devices]


def _single(args: argparse.Namespace) -> dict[str, Any]:
    with pg_server() as pg, tempfile.TemporaryDirectory(prefix="bench-single-") as d:
        store = pg.fresh_url()

        def run(*cmd: str) -> Any:
            out = subprocess.run(
                [sys.executable, "-m", "mqttpush", *cmd, "--data-dir", d, "--store", store, "--json"],
                capture_output=True,
                text=True,
                check=True,
            )
            return json.loads(out.stdout)

        app, devices = _import(run, args.devices)
        serve = subprocess.Popen(
            [sys.executable, "-m", "mqttpush", "serve", "--data-dir", d, "--store", store,
             "--mqtt-port", "0", "--http-port", "0", "--log-level", "warning", "--json"],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert serve.stdout is not None
            ready = json.loads(serve.stdout.readline())
            assert pg.proc is not None
            pg_pid = pg.proc.pid
            setup = Setup(
                "single",
                ready["http_url"],
                [int(ready["mqtt_port"])],
                {"serve": lambda: _tree_cpu(serve.pid), "postgresql": lambda: _tree_cpu(pg_pid)},
            )
            return asyncio.run(_measure(setup, app, devices, args.pushes, args.broadcasts))
        finally:
            serve.terminate()
            serve.wait(30)


def _cluster(args: argparse.Namespace) -> dict[str, Any]:
    with Cluster() as c:
        assert c.nats is not None and c.postgres is not None and c.haproxy is not None
        app, devices = _import(lambda *cmd: c.admin(*cmd), args.devices)
        cpu: dict[str, Callable[[], float]] = {}
        for proc in [*c.brokers, *c.bridges, *c.nats.nodes, c.haproxy]:
            cpu[proc.name] = lambda pid=proc.pid: cpu_seconds(pid)
        pg_pid = c.postgres.pid
        cpu["postgresql"] = lambda: _tree_cpu(pg_pid)
        setup = Setup("cluster", c.http_url, [int(b.ready["mqtt_port"]) for b in c.brokers], cpu)
        return asyncio.run(_measure(setup, app, devices, args.pushes, args.broadcasts))


def _table(results: dict[str, dict[str, Any]]) -> list[str]:
    rows = [("setup / kind", "delivered/s", "per node", "CPU ms/msg", "busiest processes (CPU ms/msg)")]
    for setup, kinds in results.items():
        for kind, r in kinds.items():
            busiest = sorted(r["cpu_ms_per_message_by_process"].items(), key=lambda kv: -kv[1])[:4]
            rows.append(
                (
                    f"{setup} {kind}",
                    f"{r['delivered_per_second']:,.0f}",
                    " / ".join(f"{n:,.0f}" for n in r["delivered_per_second_per_node"]),
                    f"{r['cpu_ms_per_message']:.2f}",
                    ", ".join(f"{name} {v:.2f}" for name, v in busiest),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cluster", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--pushes", type=int, default=5000)
    parser.add_argument("--broadcasts", type=int, default=20)
    args = parser.parse_args(argv)
    raise_nofile_limit()
    load = os.getloadavg()[0]
    results = {"single": _single(args), "cluster": _cluster(args)}
    for line in _table(results):
        print(line)
    print(json.dumps({"devices": args.devices, "cores": os.cpu_count(), "load_before": load, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
