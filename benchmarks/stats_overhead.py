"""What delivery statistics cost the push path's store work (docs/performance.md, "Statistics").

    .venv/bin/python -m benchmarks.stats_overhead [--devices 1000] [--rounds 5] [--json-out FILE]

The store thread is where the push path spends its time (commit, history, receipts), and where
statistics count. This drives one real SQLite store through what a push does there — accept a
message and its deliveries, publish them, apply their ``arrived`` receipts — as 1,000-device list
pushes and as single-device pushes, alternating rounds with statistics counting and without
(the listener removed, as ``serve --no-stats`` runs), so that other load on the machine hits
both alike. Wall-clock rates on a busy machine are blurred by its other load, so it also
replays the history rows of each round without statistics through a counter and reports that
CPU time as a share of the round's own CPU time on the store thread. Prints a table and one
JSON line; medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from mqttpush.models import DeliveryState, ReceiptEvent
from mqttpush.store import Store
from mqttpush.store.stats import StatsRepository


def _round(store: Store, app_key: str, devices: list[str], tag: str, single: int) -> dict[str, float]:
    """One list push to every device and ``single`` single-device pushes; seconds for each part."""

    def envelope(msg_id: str) -> bytes:  # laid out as mqttpush/envelope.py lays it out
        doc = {"id": msg_id, "app": app_key, "type": "notification", "title": "t", "body": "b", "data": {}}
        return json.dumps(doc, separators=(",", ":")).encode()

    expires = store.clock.now() + 3600
    t0 = time.perf_counter()
    msg_id = f"L{tag}"
    store.messages.accept_message(
        msg_id=msg_id,
        app_key=app_key,
        kind="devices",
        target={"devices": devices},
        envelope=envelope(msg_id),
        policy={},
        expires_at=expires,
        device_ids=devices,
    )
    store.messages.transition([(msg_id, d) for d in devices], DeliveryState.PUBLISHED)
    store.messages.apply_receipts([(app_key, d, msg_id, ReceiptEvent.ARRIVED) for d in devices])
    t1 = time.perf_counter()
    for i in range(single):
        one, device = f"S{tag}-{i}", devices[i % len(devices)]
        store.messages.accept_message(
            msg_id=one,
            app_key=app_key,
            kind="devices",
            target={"devices": [device]},
            envelope=envelope(one),
            policy={},
            expires_at=expires,
            device_ids=[device],
        )
        store.messages.transition([(one, device)], DeliveryState.PUBLISHED)
        store.messages.apply_receipts([(app_key, device, one, ReceiptEvent.ARRIVED)])
    t2 = time.perf_counter()
    store.stats.flush()  # what the flusher does every few seconds, counted with the round
    t3 = time.perf_counter()
    return {"list": t1 - t0 + (t3 - t2) / 2, "single": t2 - t1 + (t3 - t2) / 2}


def _replay(store: Store, calls: list[list[Any]]) -> float:
    """CPU seconds a fresh counter takes for these listener calls, then a flush (one clock
    reading around them all: reading the thread's clock per call costs more than counting)."""
    repo = StatsRepository(store)
    started = time.thread_time()
    for rows in calls:
        repo.count(None, rows)
    repo.flush()
    return time.thread_time() - started


def measure(devices: int, rounds: int, single: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "data")
        try:
            app = store.apps.create_app("bench")
            ids = [
                store.devices.register_device(
                    app.app_key, f"i{i}", ("android", "ios")[i % 2], app_version=f"1.{i % 3}"
                ).device_id
                for i in range(devices)
            ]
            store.stats.enable()
            counter = store.stats.count
            calls: list[list[Any]] = []

            def record(conn: Any, rows: list[Any]) -> None:
                calls.append(rows)

            store.transition_listeners.append(record)
            _round(store, app.app_key, ids, "warm", single)
            results: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
            shares: list[float] = []
            for r in range(rounds):
                for mode in ("off", "on") if r % 2 else ("on", "off"):
                    if mode == "off":
                        store.transition_listeners.remove(counter)
                    calls.clear()
                    cpu = time.thread_time()
                    results[mode].append(_round(store, app.app_key, ids, f"{r}{mode}", single))
                    cpu = time.thread_time() - cpu
                    if mode == "off":
                        store.transition_listeners.insert(0, counter)
                        shares.append(100 * _replay(store, calls) / cpu)
        finally:
            store.close()
    out: dict[str, Any] = {
        "devices": devices,
        "rounds": rounds,
        "single_pushes": single,
        "counting_cpu_pct": round(statistics.median(shares), 1),
    }
    for part, n in (("list", devices), ("single", single)):
        on = statistics.median(x[part] for x in results["on"])
        off = statistics.median(x[part] for x in results["off"])
        out[part] = {
            "deliveries_per_s_without": round(n / off),
            "deliveries_per_s_with": round(n / on),
            "cost_pct": round(100 * (on - off) / off, 1),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--single", type=int, default=300, help="single-device pushes per round")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()
    result = measure(args.devices, args.rounds, args.single)
    print(f"{'push shape':<28}{'without stats':>16}{'with stats':>14}{'cost':>9}")
    for part, label in (("list", f"list of {args.devices}"), ("single", "single-device")):
        r = result[part]
        print(
            f"{label + ' (deliveries/s)':<28}{r['deliveries_per_s_without']:>16,}"
            f"{r['deliveries_per_s_with']:>14,}{r['cost_pct']:>8.1f}%"
        )
    print(
        f"counting, in CPU time of the store thread's work for the same pushes: {result['counting_cpu_pct']}%"
    )
    print(json.dumps(result))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
