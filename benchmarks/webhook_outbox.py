"""What webhooks cost the receipt path (issue 17): ``store.messages.apply_receipts`` of ``arrived``
receipts on a temp store, without webhooks and with one webhook subscribed to
``delivery.arrived`` (every receipt then writes an outbox row in its transaction).

    .venv/bin/python -m benchmarks.webhook_outbox [--receipts 50000] [--rounds 2] [--json-out FILE]

Lists of 1,000 devices, batches the size ``bridge.receipts`` takes; only the apply is timed.
Rounds alternate the two cases (the machine is shared: compare within a run). Prints a table and
one JSON line."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.receipts import _published_store, apply_arrived


def run(receipts: int, webhook: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mqttpush-webhook-bench-") as tmp:
        store, keys = _published_store(Path(tmp), receipts, 1000)
        try:
            if webhook:
                store.webhooks.create(keys[0][0], "http://127.0.0.1:9/hook", ["delivery.arrived"])
            elapsed, cpu = apply_arrived(store, keys)
            events = sum(
                w["backlog"] for a in store.apps.list_apps() for w in store.webhooks.for_app(a.app_key)
            )
        finally:
            store.close()
    return {
        "scenario": "receipts_arrived_webhook" if webhook else "receipts_arrived_no_webhook",
        "n": receipts,
        "seconds": round(elapsed, 3),
        "cpu_seconds": round(cpu, 3),
        "value": round(receipts / elapsed),
        "metric": "arrived receipts recorded/s",
        "unit": "receipts/s",
        "higher_is_better": True,
        "outbox_events": events,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--receipts", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    results = [run(args.receipts, webhook) for _ in range(args.rounds) for webhook in (False, True)]
    print(f"{'scenario':<30}{'receipts':>10}{'seconds':>9}{'cpu s':>8}{'receipts/s':>12}{'events':>8}")
    for r in results:
        print(
            f"{r['scenario']:<30}{r['n']:>10}{r['seconds']:>9}{r['cpu_seconds']:>8}{r['value']:>12,}"
            f"{r['outbox_events']:>8}"
        )
    without = [r["cpu_seconds"] for r in results if r["scenario"].endswith("no_webhook")]
    with_hook = [r["cpu_seconds"] for r in results if not r["scenario"].endswith("no_webhook")]
    extra = (min(with_hook) - min(without)) / args.receipts * 1e6
    doc = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
        "cpu_us_per_event": round(extra, 1),
    }
    print(f"CPU per outbox event (best of each): {extra:.1f} µs")
    print(json.dumps(doc))
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
