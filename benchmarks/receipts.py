"""Receipts recorded per second (issue 14): ``store.messages.apply_receipts`` on a temp store, in batches
the size ``bridge.receipts.Receipts`` takes from its queue.

    .venv/bin/python -m benchmarks.receipts [--receipts 100000] [--json-out FILE]

Two shapes of the same number of ``arrived`` receipts for ``published`` deliveries: lists
(messages to 1,000 devices each, so a batch is mostly one message) and single-device pushes
(a batch touches as many messages as receipts). Only the apply is timed, not the set-up.
Prints a table and one JSON line."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from bridge.receipts import _BATCH
from mqttpush import ids
from mqttpush.models import DeliveryState, ReceiptEvent
from mqttpush.store import Store


def _published_store(data: Path, receipts: int, per_message: int) -> tuple[Store, list[tuple[str, str, str]]]:
    """A store holding ``receipts`` published deliveries, ``per_message`` devices to a message."""
    store = Store(data)
    app = store.apps.create_app("bench")
    keys: list[tuple[str, str]] = []
    devices = [f"dev{i:07d}" for i in range(receipts)]
    for start in range(0, receipts, per_message):
        msg_id = ids.new_msg_id()
        chunk = devices[start : start + per_message]
        store.messages.accept_message(
            msg_id=msg_id,
            app_key=app.app_key,
            kind="devices",
            target={"devices": chunk},
            envelope=b"{}",
            policy={},
            expires_at=time.time() + 86400,
            device_ids=chunk,
        )
        keys.extend((msg_id, d) for d in chunk)
    for start in range(0, len(keys), 10_000):
        store.messages.transition(keys[start : start + 10_000], DeliveryState.PUBLISHED)
    return store, [(app.app_key, m, d) for m, d in keys]


def apply_arrived(store: Store, keys: list[tuple[str, str, str]]) -> tuple[float, float]:
    """An ``arrived`` receipt for each ``(app_key, msg_id, device_id)``, applied in batches as the
    bridge does; returns the wall-clock and CPU seconds it took."""
    batch = [(app_key, device_id, msg_id, ReceiptEvent.ARRIVED) for app_key, msg_id, device_id in keys]
    started = time.perf_counter()
    cpu = time.process_time()
    for start in range(0, len(batch), _BATCH):
        store.messages.apply_receipts(batch[start : start + _BATCH])
    return time.perf_counter() - started, time.process_time() - cpu


def run(receipts: int, per_message: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mqttpush-receipts-bench-") as tmp:
        store, keys = _published_store(Path(tmp), receipts, per_message)
        try:
            elapsed, cpu = apply_arrived(store, keys)
            sample = keys[:: max(1, len(keys) // 1000)]
            arrived = _arrived(store, sample)
        finally:
            store.close()
    return {
        "scenario": "receipts_arrived",
        "devices_per_message": per_message,
        "n": receipts,
        "batch": _BATCH,
        "seconds": round(elapsed, 3),
        "cpu_seconds": round(cpu, 3),
        "value": round(receipts / elapsed),
        "metric": "arrived receipts recorded/s",
        "unit": "receipts/s",
        "higher_is_better": True,
        "sampled_arrived": arrived,
        "sampled": len(sample),
    }


def _arrived(store: Store, sample: list[tuple[str, str, str]]) -> int:
    """How many of the sampled deliveries read ``arrived`` in their status document (a check that
    the receipts were recorded, not only timed)."""
    states: dict[tuple[str, str], str] = {}
    for app_key, msg_id in dict.fromkeys((a, m) for a, m, _ in sample):
        status = store.messages.message_status(app_key, msg_id)
        assert status is not None
        states.update(((msg_id, str(d.device_id)), str(d.state)) for d in status.deliveries)
    return sum(1 for _, msg_id, device_id in sample if states.get((msg_id, device_id)) == "arrived")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--receipts", type=int, default=100_000)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    results = [run(args.receipts, 1000), run(args.receipts, 1)]
    print(f"{'metric':<30}{'devices/msg':>12}{'receipts':>10}{'seconds':>9}{'cpu s':>8}{'receipts/s':>12}")
    for r in results:
        print(
            f"{r['metric']:<30}{r['devices_per_message']:>12}{r['n']:>10}{r['seconds']:>9}"
            f"{r['cpu_seconds']:>8}{r['value']:>12,}"
        )
    doc = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "results": results}
    print(json.dumps(doc))
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
