"""Vendor forwarding throughput (issue 6): a tag task to N offline iOS devices, forwarded through
``mqttpush serve`` to a local fake APNs (TLS, HTTP/2, JWT checked) in a separate process.

    .venv/bin/python -m benchmarks.vendor_forwarding [--devices 10000] [--json-out FILE]

Prints a table and one JSON line: forwards per second, connections used, duplicates, and the CPU
of ``mqttpush serve`` and of the fake (percent of one core) while forwarding."""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _fake_apns(ready: Any, stop: Any, cert_dir: str, key_path: str, result: Any) -> None:
    """Runs in its own process so the fake is not competing with the measuring loop."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.fakes.apns import FakeApns
    from tests.fakes.tls import tls_server

    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    fake = FakeApns(
        team_id="TEAM123456", key_id="KEY1234567", topic="com.example.bench", public_key=key.public_key()
    )

    async def main() -> None:
        async with tls_server(fake, cert_dir=cert_dir) as (base_url, ca_file):
            ready.send((base_url, ca_file))
            while not stop.is_set():
                await asyncio.sleep(0.1)
                result.value = len(fake.received)
            result.value = len(fake.received)
            ready.send(
                {
                    "received": len(fake.received),
                    "unique": len({n.device_token for n in fake.received}),
                    "connections": len(fake.connections),
                    "http": sorted(fake.http_versions),
                }
            )

    asyncio.run(main())


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(devices: int, connections: int = 1, max_in_flight: int = 1000) -> dict[str, Any]:
    from bridge.vendors import check_vendor_config
    from mqttpush.client import PushClient
    from mqttpush.store import Store
    from tests.fakes.apns import write_auth_key

    work = Path(tempfile.mkdtemp(prefix="mqttpush-vendor-bench-"))
    write_auth_key(work / "AuthKey.p8")
    parent, child = multiprocessing.Pipe()
    stop, received = multiprocessing.Event(), multiprocessing.Value("i", 0)
    fake = multiprocessing.Process(
        target=_fake_apns, args=(child, stop, str(work / "certs"), str(work / "AuthKey.p8"), received)
    )
    (work / "certs").mkdir()
    fake.start()
    server = None
    try:
        base_url, ca_file = parent.recv()
        data = work / "data"
        store = Store(data)
        app = store.apps.create_app("bench")
        rows = store.devices.import_devices(
            app.app_key, [{"install_id": f"i{i}", "platform": "ios", "tags": ["all"]} for i in range(devices)]
        )
        store.devices.set_vendor_tokens([(r["device_id"], "apns", f"{i:064x}") for i, r in enumerate(rows)])
        obj = {
            "team_id": "TEAM123456",
            "key_id": "KEY1234567",
            "key_file": "AuthKey.p8",
            "topic": "com.example.bench",
            "base_url": base_url,
            "ca_file": ca_file,
            "connections": connections,
            "max_in_flight": max_in_flight,
        }
        store.vendors.put_vendor_config(app.app_key, "apns", check_vendor_config("apns", obj, work, None))
        store.close()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mqttpush",
                "serve",
                "--data-dir",
                str(data),
                "--mqtt-port",
                "0",
                "--http-port",
                "0",
                "--json",
                "--log-level",
                "warning",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        url = json.loads(server.stdout.readline())["http_url"]
        with PushClient(url, app.app_key, app.secret, timeout=60) as c:
            cpu_before = _cpu_seconds(server.pid), _cpu_seconds(fake.pid)  # type: ignore[arg-type]
            started = time.monotonic()
            task_id = c.push({"target": {"tags": "all"}, "notification": {"title": "bench"}})["task_id"]
            accepted = time.monotonic() - started
            deadline = started + 600
            while True:
                task = c.task(task_id)
                if task["forwarded"] + task["failed"] >= devices or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            cpu_after = _cpu_seconds(server.pid), _cpu_seconds(fake.pid)  # type: ignore[arg-type]
        stop.set()
        seen = parent.recv()
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        stop.set()
        fake.join(30)
        if fake.is_alive():
            fake.kill()
    return {
        "scenario": "vendor_forwarding_apns",
        "devices": devices,
        "accept_ms": round(accepted * 1000, 1),
        "seconds": round(elapsed, 2),
        "forwards_per_s": round(task["forwarded"] / elapsed, 1),
        "forwarded": task["forwarded"],
        "failed": task["failed"],
        "lost": devices - seen["unique"],
        "duplicated": seen["received"] - seen["unique"],
        "connections": seen["connections"],
        "max_in_flight": max_in_flight,
        "cpu_percent_server": round(100 * (cpu_after[0] - cpu_before[0]) / elapsed),
        "cpu_percent_fake_apns": round(100 * (cpu_after[1] - cpu_before[1]) / elapsed),
        "http": seen["http"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=1, help="HTTP/2 connections (VENDORS.json)")
    parser.add_argument("--max-in-flight", type=int, default=1000, help="requests in flight (VENDORS.json)")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.devices, args.connections, args.max_in_flight)
    print(
        f"{'scenario':<26}{'devices':>9}{'seconds':>9}{'forwards/s':>12}{'lost':>6}{'dup':>5}{'conns':>7}"
        f"{'cpu serve':>11}{'cpu fake':>10}"
    )
    print(
        f"{result['scenario']:<26}{result['devices']:>9}{result['seconds']:>9}{result['forwards_per_s']:>12}"
        f"{result['lost']:>6}{result['duplicated']:>5}{result['connections']:>7}"
        f"{result['cpu_percent_server']:>10}%{result['cpu_percent_fake_apns']:>9}%"
    )
    doc = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "results": [result]}
    print(json.dumps(doc))
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
