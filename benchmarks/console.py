"""The web console's API on a large store: 100,000 devices and 1,000,000 deliveries.

    .venv/bin/python -m benchmarks.console [--devices 100000] [--big 9] [--small 10000] [--json]
                                           [--workdir DIR]   (keep the seeded store, reuse it next time)

Seeds a fresh data dir through the store (``import_devices``, ``accept_message``,
``transition``): ``--big`` group messages to every device, and ``--small`` messages to 10 devices
each (9 × 100,000 + 10,000 × 10 = 1,000,000 deliveries by default), every delivery published,
85 % arrived (a quarter of those opened), the rest failed, so the server starts with nothing to
re-publish. Then starts ``mqttpush serve`` on it, signs in to the console and times each console
call (median and p95 of ``--repeat`` calls, in ms), first pages and deep pages (followed cursor
by cursor) alike. Prints a table and, with ``--json``, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from mqttpush import ids
from mqttpush.models import DeliveryState
from mqttpush.store import Store

PLATFORMS = ("android", "ios", "web", "iot")


def seed(data_dir: Path, devices: int, big: int, small: int) -> dict[str, Any]:
    store = Store(data_dir)
    app = store.apps.create_app("bench")
    started = time.perf_counter()
    device_ids: list[str] = []
    for first in range(0, devices, 10_000):
        rows = [
            {
                "install_id": f"install-{i}",
                "platform": PLATFORMS[i % len(PLATFORMS)],
                "app_version": f"2.{i % 7}",
                "tags": ["beta"] if i % 10 == 0 else [],
                "alias": f"user-{i}",
            }
            for i in range(first, min(first + 10_000, devices))
        ]
        device_ids += [d["device_id"] for d in store.devices.import_devices(app.app_key, rows)]
    seeded_devices = time.perf_counter() - started

    def message(targets: list[str], n: int, task: bool) -> str:
        msg_id = ids.new_msg_id()
        envelope = json.dumps({"id": msg_id, "title": f"message {n}", "body": "benchmark"}).encode()
        store.messages.accept_message(
            msg_id=msg_id,
            app_key=app.app_key,
            kind="tags" if task else "devices",
            target={"tags": "beta or not beta"} if task else {"devices": targets},
            envelope=envelope,
            policy={"ttl": 86400},
            expires_at=time.time() + 86400,
            device_ids=targets,
            task_id="t" + msg_id if task else None,
        )
        for part in range(0, len(targets), 20_000):
            chunk = targets[part : part + 20_000]
            keys = [(msg_id, d) for d in chunk]
            store.messages.transition(keys, DeliveryState.PUBLISHED)
            cut = len(chunk) * 85 // 100
            store.messages.transition(keys[:cut], DeliveryState.ARRIVED)
            store.messages.transition(keys[: cut // 4], DeliveryState.OPENED)
            store.messages.transition(keys[cut:], DeliveryState.FAILED, "benchmark")
        if task:
            store.tasks.finish_task("t" + msg_id, "done")
        return msg_id

    big_ids = [message(device_ids, n, True) for n in range(big)]
    small_ids = [message(device_ids[(n * 10) % devices :][:10], big + n, False) for n in range(small)]
    deliveries = big * devices + small * 10
    seeded = time.perf_counter() - started
    store.close()
    return {
        "app_key": app.app_key,
        "app_secret": app.secret,
        "device": device_ids[devices // 2],
        "big": big_ids[-1] if big_ids else small_ids[-1],
        "small": small_ids[-1] if small_ids else big_ids[-1],
        "devices": devices,
        "deliveries": deliveries,
        "seed_devices_s": round(seeded_devices, 1),
        "seed_total_s": round(seeded, 1),
    }


def timed(call: Callable[[], httpx.Response], repeat: int) -> tuple[float, float, int]:
    samples = []
    size = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = call()
        samples.append((time.perf_counter() - t0) * 1000)
        if res.status_code >= 400:
            raise SystemExit(f"{res.request.url}: {res.status_code} {res.text[:200]}")
        size = len(res.content)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.95))], size


def deep_cursor(http: httpx.Client, path: str, key: str, pages: int, limit: int = 50) -> str | None:
    cursor = None
    for _ in range(pages):
        doc = http.get(path, params={"limit": str(limit)} | ({"cursor": cursor} if cursor else {})).json()
        if not doc.get("next"):
            break
        cursor = doc["next"]
    return cursor


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mqttpush-console-bench-"))
    data_dir = work / "data"
    known = work / "facts.json"
    if known.exists():  # seeded by an earlier run with --workdir: time the calls again
        facts = json.loads(known.read_text())
    else:
        print(
            f"seeding {args.devices} devices, {args.big} × {args.devices} + {args.small} × 10 deliveries …",
            file=sys.stderr,
        )
        facts = seed(data_dir, args.devices, args.big, args.small)
        known.write_text(json.dumps(facts))
    print(f"seeded in {facts['seed_total_s']} s; starting mqttpush serve", file=sys.stderr)
    try:
        return measure(args, data_dir, facts)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, data_dir: Path, facts: dict[str, Any]) -> dict[str, Any]:
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "mqttpush", "serve", "--data-dir", str(data_dir), "--host", "127.0.0.1"),
            *("--mqtt-port", "0", "--http-port", "0", "--json", "--log-level", "warning"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        ready = json.loads(server.stdout.readline())
        url = ready["http_url"]
        with httpx.Client(base_url=url, timeout=60) as http:
            res = http.post(
                "/console/api/session",
                json={"app_key": facts["app_key"], "app_secret": facts["app_secret"]},
                headers={"Origin": url},
            )
            res.raise_for_status()
            csrf = res.json()["csrf_token"]
            big, small, device = facts["big"], facts["small"], facts["device"]
            deep_msgs = deep_cursor(http, "/console/api/messages", "messages", 100)
            deep_deliveries = deep_cursor(http, f"/console/api/messages/{big}/deliveries", "deliveries", 1000)
            preview = {
                "target": {"tags": "beta and not churned"},
                "notification": {"title": "Hi", "body": "x"},
            }
            calls: list[tuple[str, Callable[[], httpx.Response]]] = [
                ("messages, first page (50)", lambda: http.get("/console/api/messages")),
                (
                    "messages, page 101 (cursor)",
                    lambda: http.get("/console/api/messages", params={"cursor": deep_msgs or ""}),
                ),
                (
                    "messages, state=draft (none)",
                    lambda: http.get("/console/api/messages", params={"state": "draft"}),
                ),
                (
                    "messages, last hour",
                    lambda: http.get("/console/api/messages", params={"since": str(time.time() - 3600)}),
                ),
                ("tasks, first page", lambda: http.get("/console/api/tasks")),
                (
                    f"message detail ({args.devices:,} deliveries)",
                    lambda: http.get(f"/console/api/messages/{big}"),
                ),
                ("message detail (10 deliveries)", lambda: http.get(f"/console/api/messages/{small}")),
                ("deliveries, first page (50)", lambda: http.get(f"/console/api/messages/{big}/deliveries")),
                (
                    "deliveries, page 1001 (cursor)",
                    lambda: http.get(
                        f"/console/api/messages/{big}/deliveries", params={"cursor": deep_deliveries or ""}
                    ),
                ),
                (
                    "deliveries, state=failed",
                    lambda: http.get(f"/console/api/messages/{big}/deliveries", params={"state": "failed"}),
                ),
                (
                    "statistics, last 24 h by platform",
                    lambda: http.get("/console/api/stats", params={"by": "platform"}),
                ),
                ("device lookup by id", lambda: http.get("/console/api/devices", params={"q": device})),
                (
                    "device lookup by install id",
                    lambda: http.get("/console/api/devices", params={"q": "install-777"}),
                ),
                (
                    "device lookup by alias",
                    lambda: http.get("/console/api/devices", params={"q": "user-4242"}),
                ),
                ("device detail", lambda: http.get(f"/console/api/devices/{device}")),
                (
                    "preview (tag expression)",
                    lambda: http.post(
                        "/console/api/preview", json=preview, headers={"Origin": url, "X-CSRF-Token": csrf}
                    ),
                ),
            ]
            rows = []
            for name, call in calls:
                p50, p95, size = timed(call, args.repeat)
                rows.append({"call": name, "p50_ms": round(p50, 1), "p95_ms": round(p95, 1), "bytes": size})
    finally:
        server.terminate()
        server.wait(30)
    return {"facts": {k: v for k, v in facts.items() if k not in ("app_secret",)}, "results": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--big", type=int, default=9, help="group messages to every device")
    parser.add_argument("--small", type=int, default=10_000, help="messages to 10 devices each")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", help="keep the seeded store here and reuse it on the next run")
    args = parser.parse_args()
    doc = run(args)
    f = doc["facts"]
    print(f"{f['devices']:,} devices, {f['deliveries']:,} deliveries, seeded in {f['seed_total_s']} s")
    print(f"{'console call':<40} {'p50 ms':>8} {'p95 ms':>8} {'bytes':>8}")
    for r in doc["results"]:
        print(f"{r['call']:<40} {r['p50_ms']:>8} {r['p95_ms']:>8} {r['bytes']:>8}")
    if args.json:
        print(json.dumps(doc))


if __name__ == "__main__":
    main()
