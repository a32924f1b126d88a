"""Pushes under attack: ``python -m benchmarks.flood [--quick]``.

Against ``mqttpush serve`` (a subprocess, 127.0.0.1 only), while 100 real devices receive pushes
sent through the signed HTTP API, this process keeps open at once: sockets that never send
CONNECT (re-opened when the broker closes them), sockets that send garbage (again and again),
clients retrying wrong passwords, and slowloris HTTP connections (a header line every few
seconds, never finished). Reported: pushes lost, accept→device latency (measured from the push
request, so an upper bound), what became of the attackers, the broker's log bytes, CPU per
process; a table, then one JSON line. Bounded: ≤ 90 s of flood and a fixed count of everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import mqtt
from benchmarks.harness import percentile
from benchmarks.lean_http import HttpError, SignedConnection
from benchmarks.procs import (
    HOST,
    Broker,
    HarnessError,
    _read_line,
    install_cleanup,
    make_fleet,
    raise_nofile_limit,
    spawn,
)

GARBAGE = b"\x00\x01garbage\xff\xfe" * 8


@dataclass(frozen=True)
class Settings:
    devices: int = 100
    silent: int = 5000
    garbage: int = 1000
    bad_passwords: int = 500
    slowloris: int = 1000
    seconds: float = 60.0
    push_rate: float = 50.0  # pushes a second, round robin over the devices

    @classmethod
    def quick(cls) -> Settings:
        return cls(seconds=20.0)


def start_serve(data_dir: Path, timeout: float = 60.0) -> Broker:
    """``python -m mqttpush serve`` at log level info, so the log's size under the flood shows."""
    workdir = Path(tempfile.mkdtemp(prefix="serve-", dir=data_dir.parent))
    stderr = (workdir / "stderr.log").open("wb")
    cmd = [sys.executable, "-m", "mqttpush", "serve", "--data-dir", str(data_dir), "--host", HOST]
    cmd += ["--mqtt-port", "0", "--http-port", "0", "--json", "--log-level", "info"]
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=stderr)
    stderr.close()
    broker = Broker("mqttpush", proc, 0, workdir=workdir)
    line = _read_line(proc, timeout)
    if not line:
        broker.stop()
        raise HarnessError(f"mqttpush serve did not start: {broker.stderr_tail() or 'no ready line'}")
    ready = json.loads(line)
    broker.mqtt_port, broker.http_url, broker.info = int(ready["mqtt_port"]), str(ready["http_url"]), ready
    return broker


class Flood:
    """The attackers: each task loops until ``stop`` is set, counting what the server did."""

    def __init__(self, port: int, http_port: int, stop: asyncio.Event) -> None:
        # its own process (see attack_process): the devices' latencies must not include its loop
        self.port, self.http_port, self.stop = port, http_port, stop
        self.counts: Counter[str] = Counter()

    async def _until_closed(self, reader: asyncio.StreamReader) -> None:
        stopped = asyncio.ensure_future(self.stop.wait())
        closed = asyncio.ensure_future(reader.read())
        await asyncio.wait({stopped, closed}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        closed.cancel()

    async def _open(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
        except (OSError, TimeoutError):
            self.counts["connect failed"] += 1
            await asyncio.sleep(0.5)  # pacing of a failed attacker, not a wait for an event
            return None

    async def silent(self) -> None:
        """Open a socket, send nothing; when the broker closes it, open another."""
        while not self.stop.is_set():
            opened = await self._open(self.port)
            if opened is None:
                continue
            reader, writer = opened
            self.counts["silent opened"] += 1
            await self._until_closed(reader)
            if not self.stop.is_set():
                self.counts["silent closed by server"] += 1
            writer.close()

    async def garbage(self) -> None:
        while not self.stop.is_set():
            opened = await self._open(self.port)
            if opened is None:
                continue
            reader, writer = opened
            writer.write(GARBAGE)
            self.counts["garbage sent"] += 1
            await self._until_closed(reader)
            writer.close()

    async def bad_password(self, index: int) -> None:
        while not self.stop.is_set():
            opened = await self._open(self.port)
            if opened is None:
                continue
            reader, writer = opened
            writer.write(mqtt.connect_packet(f"x{index}", f"x{index}", "wrong", keepalive=60, clean=True))
            try:
                answer = await asyncio.wait_for(reader.read(4), 15)
            except (TimeoutError, ConnectionError):
                answer = b""
            self.counts[
                "wrong password: CONNACK 5" if answer[3:4] == b"\x05" else "wrong password: closed"
            ] += 1
            writer.close()

    async def slowloris(self) -> None:
        while not self.stop.is_set():
            opened = await self._open(self.http_port)
            if opened is None:
                continue
            reader, writer = opened
            self.counts["slowloris opened"] += 1
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            closed = asyncio.ensure_future(reader.read())
            while not self.stop.is_set() and not closed.done():
                writer.write(b"X-a: b\r\n")  # one more header line, never the blank one
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(closed), 3)
            if closed.done() and not self.stop.is_set():
                self.counts["slowloris closed by server"] += 1
            closed.cancel()
            writer.close()


async def _attack(port: int, http_port: int, settings: Settings, done: Any) -> dict[str, int]:
    stop = asyncio.Event()
    flood = Flood(port, http_port, stop)
    attackers = [flood.silent() for _ in range(settings.silent)]
    attackers += [flood.garbage() for _ in range(settings.garbage)]
    attackers += [flood.bad_password(i) for i in range(settings.bad_passwords)]
    attackers += [flood.slowloris() for _ in range(settings.slowloris)]
    attack = asyncio.gather(*attackers)
    loop = asyncio.get_running_loop()
    # told to stop by the parent, or at the latest after the flood's length and the stragglers' wait
    await loop.run_in_executor(None, done.wait, settings.seconds + 30)
    stop.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(attack, 30)
    return dict(flood.counts)


def attack_process(port: int, http_port: int, settings: Settings, done: Any, out: Any) -> None:
    raise_nofile_limit()
    started = resource.getrusage(resource.RUSAGE_SELF)
    counts = asyncio.run(_attack(port, http_port, settings, done))
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = used.ru_utime + used.ru_stime - started.ru_utime - started.ru_stime
    out.put((counts, cpu))


async def flood_run(
    settings: Settings, broker: Broker, app_key: str, app_secret: str, devices: list[Any]
) -> dict[str, Any]:
    assert broker.http_url is not None
    http_port = int(broker.http_url.rsplit(":", 1)[1].split("/")[0])
    received: dict[int, float] = {}
    missing: set[int] = set()  # filled once the pushes are all sent
    all_in = asyncio.Event()

    def on_publish(_conn: mqtt.Connection, _topic: bytes, payload: bytes, _qos: int, _retain: bool) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            seq = int(json.loads(payload)["data"]["seq"])
            received.setdefault(seq, time.monotonic())
            if seq in missing:
                missing.discard(seq)
                if not missing:
                    all_in.set()

    conns = []
    for d in devices:  # the devices are up before the flood: a blocked address keeps its connections
        conn = await mqtt.open_connection(
            HOST, broker.mqtt_port, d.device_id, d.device_id, d.token, on_publish=on_publish
        )
        await conn.subscribe([f"mqttpush/{app_key}/d/{d.device_id}/m/+"], 1)
        conns.append(conn)

    ctx = multiprocessing.get_context("spawn")
    done, out = ctx.Event(), ctx.Queue()
    attacker = ctx.Process(target=attack_process, args=(broker.mqtt_port, http_port, settings, done, out))
    attacker.start()
    await asyncio.sleep(3)  # pacing: the flood ramps up before the first push

    sent: dict[int, float] = {}
    errors: Counter[str] = Counter()
    t0 = time.monotonic()
    total = int(settings.seconds * settings.push_rate)

    async def pusher(offset: int, stride: int) -> None:
        conn = SignedConnection(broker.http_url or "", app_key, app_secret)
        try:
            for seq in range(offset, total, stride):
                due = t0 + seq / settings.push_rate
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())  # pacing to the push rate
                device = devices[seq % len(devices)].device_id
                doc = {
                    "target": {"devices": [device]},
                    "notification": {"title": "flood", "body": "x"},
                    "data": {"seq": seq},
                }
                sent_at = time.monotonic()
                try:
                    await asyncio.wait_for(conn.request("POST", "/api/v1/push", doc), 10)
                except HttpError as exc:
                    errors[f"{exc.status} {exc.code}"] += 1
                    continue
                except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                    errors[type(exc).__name__] += 1
                    conn.close()
                    continue
                sent[seq] = sent_at
        finally:
            conn.close()

    await asyncio.gather(*(pusher(i, 4) for i in range(4)))
    missing.update(set(sent) - set(received))
    if missing:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), 10)  # stragglers, bounded
    done.set()
    counts, attack_cpu = await asyncio.get_running_loop().run_in_executor(None, out.get, True, 90)
    attacker.join(10)
    for conn in conns:
        conn.disconnect()

    latencies = [received[s] - sent[s] for s in sent if s in received]
    return {
        "pushes_accepted": len(sent),
        "push_errors": dict(errors),
        "lost": len(set(sent) - set(received)),
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
        "max_s": max(latencies) if latencies else None,
        "attackers": counts,
        "attack_cpu_s": round(attack_cpu, 2),
        "flood_seconds": round(time.monotonic() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flood", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="20 s of pushes under the flood instead of 60 s")
    args = p.parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    install_cleanup()
    nofile = raise_nofile_limit()
    need = (
        settings.silent
        + settings.garbage
        + settings.bad_passwords
        + settings.slowloris
        + settings.devices
        + 200
    )
    if nofile < need:
        print(f"the fd limit is {nofile}, the flood needs {need}", file=sys.stderr)
        return 2
    workroot = Path(tempfile.mkdtemp(prefix="mqttpush-flood-"))
    fleet = make_fleet(workroot / "data", settings.devices)
    broker = start_serve(fleet.data_dir)
    try:
        cpu0, own0 = broker.cpu_seconds(), resource.getrusage(resource.RUSAGE_SELF)
        result = asyncio.run(flood_run(settings, broker, fleet.app_key, fleet.app_secret, fleet.devices))
        own1 = resource.getrusage(resource.RUSAGE_SELF)
        result["cpu_s"] = {
            "mqttpush serve": round(broker.cpu_seconds() - cpu0, 2),
            "devices + pushers": round(own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime, 2),
            "attackers": result.pop("attack_cpu_s"),
        }
        result["serve_alive"] = broker.alive()
        log = (broker.workdir or workroot) / "stderr.log"
        result["serve_log_bytes"] = log.stat().st_size if log.exists() else None
        result["serve_rss_kb"] = broker.rss_kb()
    finally:
        broker.stop()
    result |= {
        "mode": "quick" if args.quick else "full",
        "settings": settings.__dict__,
        "cpus": os.cpu_count(),
        "ok": result["lost"] == 0 and (result["p99_s"] or 0) < 1.0,
    }
    print(f"{'flood':<34} {'value':>12}")
    rows = [
        ("pushes accepted", result["pushes_accepted"]),
        ("lost", result["lost"]),
        ("accept→device p50 (s)", result["p50_s"]),
        ("accept→device p99 (s)", result["p99_s"]),
        ("accept→device max (s)", result["max_s"]),
        *((f"push error {k}", v) for k, v in result["push_errors"].items()),
        *(sorted(result["attackers"].items())),
        *((f"CPU s, {k}", v) for k, v in result["cpu_s"].items()),
        ("serve log bytes", result["serve_log_bytes"]),
        ("serve RSS KiB", result["serve_rss_kb"]),
    ]
    for name, value in rows:
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{name:<34} {shown:>12}")
    print(json.dumps({"benchmark": "flood", **result}))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
