"""Benchmark mqttpush against mosquitto: ``python -m benchmarks.run [--quick] [--scenarios a,b]``.

Prints a table (stdout), then one line of JSON ``{"machine": {...}, "results": [...]}``.
Progress goes to stderr. Exit status 0 whatever the numbers; 1 when nothing could be measured
or the harness itself failed; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import procs
from benchmarks.harness import Row
from benchmarks.scenarios import RUNNERS, SCENARIOS, Context, Settings, Skipped


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes and shorter phases (a few minutes)")
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all)",
    )
    p.add_argument(
        "--max-seconds", type=float, default=600.0, help="time budget of the whole run (default 600)"
    )
    p.add_argument("--json-out", type=Path, default=None, help="also write the JSON document to this file")
    p.add_argument("--workdir", type=Path, default=None, help="where data dirs go (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (data dirs, broker logs)")
    args = p.parse_args(argv)
    chosen = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or not chosen:
        p.error(f"unknown scenario(s) {unknown}; choose from {','.join(SCENARIOS)}")
    args.chosen = tuple(s for s in SCENARIOS if s in chosen)
    return args


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine_info(quick: bool, settings: Settings) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "mosquitto": procs.mosquitto_version(),
        "nofile_soft": soft,
        "nofile_hard": hard,
        "mode": "quick" if quick else "full",
        "settings": {k: v for k, v in vars(settings).items()},
    }
    try:
        from mqttpush import __version__

        info["mqttpush"] = __version__
    except Exception as exc:
        info["mqttpush"] = f"unavailable: {exc!r}"
    for key, path in (("somaxconn", "/proc/sys/net/core/somaxconn"), ("mem_total", "/proc/meminfo")):
        try:
            text = Path(path).read_text()
            info[key] = text.split()[1] + " kB" if key == "mem_total" else int(text)
        except (OSError, ValueError, IndexError):
            pass
    with contextlib.suppress(OSError, StopIteration):
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return info


def add_ratios(rows: list[Row]) -> None:
    """``ratio_vs_mosquitto`` = mqttpush value / mosquitto value, on the mqttpush row."""
    mosq = {
        (r.scenario, r.n, r.metric): r.value
        for r in rows
        if r.broker == "mosquitto" and r.value and not r.error
    }
    for r in rows:
        if r.broker == "mqttpush" and r.value is not None:
            base = mosq.get((r.scenario, r.n, r.metric))
            if base:
                r.ratio_vs_mosquitto = r.value / base


def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v:.0f}%"


def _count(v: int | None) -> str:
    return "—" if v is None else str(v)


def print_table(rows: list[Row], elapsed: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mqttpush vs mosquitto ({elapsed:.0f}s)", show_lines=False)
    for col, justify in (
        ("scenario", "left"),
        ("broker", "left"),
        ("N", "right"),
        ("metric", "left"),
        ("value", "right"),
        ("unit", "left"),
        ("expected", "right"),
        ("lost", "right"),
        ("dup", "right"),
        ("misdeliv.", "right"),
        ("broker CPU", "right"),
        ("clients CPU", "right"),
        ("other CPU", "right"),
        ("vs mosquitto", "right"),
    ):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in rows:
        ratio = ""
        if r.ratio_vs_mosquitto is not None:
            ratio = f"{r.ratio_vs_mosquitto:.3g}×"
        value = "error" if r.value is None and r.error else _fmt(r.value)
        table.add_row(
            r.scenario,
            r.broker,
            str(r.n),
            r.metric,
            value,
            r.unit,
            _count(r.expected),
            _count(r.lost),
            _count(r.dup),
            _count(r.misdelivered),
            _pct(r.broker_cpu_pct),
            _pct(r.clients_cpu_pct),
            _pct(r.other_cpu_pct),
            ratio,
        )
    console = Console(width=240, soft_wrap=False)
    console.print(table)
    errors = [r for r in rows if r.error]
    if errors:
        console.print("errors:")
        seen = set()
        for r in errors:
            key = (r.scenario, r.broker, r.n, r.error)
            if key in seen:
                continue
            seen.add(key)
            console.print(f"  {r.scenario} {r.broker} n={r.n}: {r.error}", markup=False)
    logged = {}
    for r in rows:
        log_info = r.extra.get("broker_log")
        if log_info:
            logged[(r.scenario, r.broker, r.n)] = log_info
    if logged:
        console.print("broker log warnings/errors (first distinct lines):")
        for (scenario, broker, n), info in logged.items():
            console.print(f"  {scenario} {broker} n={n}: {info['count']} lines", markup=False)
            for line in info["first"]:
                console.print(f"    {line}", markup=False)
    console.print(
        "ratio = mqttpush / mosquitto for the same metric (msg/s: higher is better; ms, s, MiB, KiB: lower is better)."
        f" CPU: % of one core during the measured phase ({os.cpu_count()} cores in all); 'other' is the rest"
        " of the machine (kernel networking, other programs). When broker + clients + other is near the"
        " whole machine and the broker is not, the machine, not the broker, set the pace."
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    procs.install_cleanup()
    nofile = procs.raise_nofile_limit()
    settings = Settings.quick() if args.quick else Settings.full()
    started = time.monotonic()
    workroot = args.workdir or Path(tempfile.mkdtemp(prefix="mqttpush-bench-"))
    workroot.mkdir(parents=True, exist_ok=True)
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        log("mosquitto not found: the mosquitto rows will record the error")
    ctx = Context(
        settings=settings,
        scenarios=args.chosen,
        workroot=workroot,
        deadline=started + args.max_seconds,
        mp=multiprocessing.get_context("spawn"),
        log=log,
    )
    log(
        f"mode={'quick' if args.quick else 'full'} scenarios={','.join(args.chosen)} workdir={workroot} nofile={nofile}"
    )
    rows: list[Row] = []
    try:
        for name in args.chosen:
            try:
                rows += RUNNERS[name](ctx)
            except Skipped as exc:
                rows.append(Row(name, "-", 0, "(scenario)", None, "", error=str(exc)))
            except Exception as exc:
                log(f"{name}: {type(exc).__name__}: {exc}")
                rows.append(
                    Row(name, "-", 0, "(scenario)", None, "", error=f"{type(exc).__name__}: {exc}"[:600])
                )
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(workroot, ignore_errors=True)
    add_ratios(rows)
    elapsed = time.monotonic() - started
    doc = {
        "machine": machine_info(args.quick, settings) | {"elapsed_s": round(elapsed, 1)},
        "results": [r.as_json() for r in rows],
    }
    print_table(rows, elapsed)
    line = json.dumps(doc, separators=(",", ":"), default=str)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(line, flush=True)
    measured = [r for r in rows if r.value is not None]
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(main())
