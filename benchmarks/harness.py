"""The harness side of the worker processes, and the results a scenario records."""

from __future__ import annotations

import contextlib
import math
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext
from typing import Any

from benchmarks.procs import HarnessError, cpu_seconds
from benchmarks.workers import worker_main


class WorkerError(HarnessError):
    """A worker process answered with an error, died, or did not answer in time."""


class Worker:
    """One worker process (``fleet``, ``publisher`` or ``pusher``) and the pipe that drives it."""

    def __init__(
        self, ctx: SpawnContext, role: str, counter: Any = None, counters: tuple[Any, ...] = ()
    ) -> None:
        self.role = role
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=worker_main, args=(role, child, counter, counters), daemon=True, name=f"bench-{role}"
        )
        self.proc.start()
        child.close()
        self.busy = False

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def send(self, cmd: str, **args: Any) -> None:
        self.pipe.send((cmd, args))
        self.busy = True

    def recv(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not self.pipe.poll(min(0.5, max(0.0, deadline - time.monotonic()))):
            if not self.proc.is_alive():
                raise WorkerError(f"{self.role} worker died (exit code {self.proc.exitcode})")
            if time.monotonic() >= deadline:
                raise WorkerError(f"{self.role} worker did not answer within {timeout:.0f}s")
        try:
            status, value = self.pipe.recv()
        except (EOFError, OSError) as exc:
            raise WorkerError(f"{self.role} worker pipe closed: {exc!r}") from None
        self.busy = False
        if status != "ok":
            raise WorkerError(f"{self.role} worker: {value}")
        return value

    def call(self, cmd: str, timeout: float, **args: Any) -> Any:
        self.send(cmd, **args)
        return self.recv(timeout)

    def close(self) -> None:
        if self.proc.is_alive() and not self.busy:
            with contextlib.suppress(Exception):
                self.pipe.send(("stop", {}))
                self.proc.join(3)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(3)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(3)
        with contextlib.suppress(Exception):
            self.pipe.close()

    def cpu_seconds(self) -> float:
        try:
            return cpu_seconds(self.pid)
        except (OSError, ValueError):
            return 0.0


class Clients:
    """The client processes of one measurement: ``fleets`` receiver processes holding the device
    connections, one publisher and ``pushers`` HTTP pusher processes, sharing delivery counters."""

    def __init__(self, ctx: SpawnContext, fleets: int = 2, publisher: bool = True, pushers: int = 0) -> None:
        self.counters = tuple(ctx.RawValue("q", 0) for _ in range(fleets))
        self.pushed = ctx.Value("q", 0)
        self.fleets: list[Worker] = []
        self.publisher: Worker | None = None
        self.pushers: list[Worker] = []
        try:
            self.fleets = [Worker(ctx, "fleet", c) for c in self.counters]
            self.publisher = Worker(ctx, "publisher", None, self.counters) if publisher else None
            self.pushers = [Worker(ctx, "pusher", self.pushed, self.counters) for _ in range(pushers)]
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def workers(self) -> list[Worker]:
        return [*self.fleets, *([self.publisher] if self.publisher else []), *self.pushers]

    def close(self) -> None:
        for w in self.workers():
            w.close()

    def cpu_seconds(self) -> float:
        return sum(w.cpu_seconds() for w in self.workers())

    def delivered(self) -> int:
        """Every PUBLISH the fleets received so far."""
        return sum(int(c.value) for c in self.counters)

    # --- fleets ---------------------------------------------------------------------------------

    def fleet_call(
        self, cmd: str, wait: float, per_fleet: list[dict[str, Any]] | None = None, **args: Any
    ) -> list[Any]:
        """Send ``cmd`` to every fleet at once, then collect the answers (``wait`` seconds at most)."""
        for i, w in enumerate(self.fleets):
            w.send(cmd, **(per_fleet[i] if per_fleet else args))
        deadline = time.monotonic() + wait
        return [w.recv(max(0.1, deadline - time.monotonic())) for w in self.fleets]

    def connect(
        self,
        port: int,
        devices: list[tuple[Any, ...]],
        timeout: float,
        concurrency: int = 0,
        per_connection: float = 60.0,
    ) -> dict[str, Any]:
        """Connect (and subscribe) devices spread over the fleets, each connection given
        ``per_connection`` seconds and the whole ``timeout``; merged timings and errors."""
        k = len(self.fleets)
        parts = [devices[i::k] for i in range(k)]
        per = min(per_connection, timeout)
        answers = self.fleet_call(
            "connect",
            timeout + 5,
            per_fleet=[
                {"port": port, "devices": p, "concurrency": concurrency, "timeout": per} for p in parts
            ],
        )
        errors: Counter[str] = Counter()
        for a in answers:
            errors.update(a["errors"])

        def last(key: str) -> float | None:
            vals = [a[key] for a in answers if a[key] is not None]
            return max(vals) if vals else None

        return {
            "requested": sum(a["requested"] for a in answers),
            "connected": sum(a["connected"] for a in answers),
            "subscribed": sum(a["subscribed"] for a in answers),
            "sub_refused": sum(a["sub_refused"] for a in answers),
            "errors": dict(errors),
            "t0": min(a["t0"] for a in answers),
            "t_connack_last": last("t_connack_last"),
            "t_suback_last": last("t_suback_last"),
            "t_done": max(a["t_done"] for a in answers),
        }

    def reset(self, mode: str = "seq", receipts: bool = False, min_seq: int = 0) -> None:
        self.fleet_call("reset", 30, mode=mode, receipts=receipts, min_seq=min_seq)

    def status(self) -> dict[str, Any]:
        answers = self.fleet_call("status", 30)
        out = {k: sum(a[k] for a in answers) for k in ("received", "unique", "dup", "misdelivered", "open")}
        out["last_unique"] = max(a["last_unique"] for a in answers)
        return out

    def wait_unique(self, expected: int, timeout: float, quiet: float = 15.0) -> dict[str, Any]:
        """Poll until the fleets hold ``expected`` unique messages, ``timeout`` passes, or
        nothing new arrives for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        last_change, last_received = time.monotonic(), -1
        while True:
            st = self.status()
            now = time.monotonic()
            if st["received"] != last_received:
                last_change, last_received = now, st["received"]
            if st["unique"] >= expected or now >= deadline or now - last_change >= quiet:
                st["timed_out"] = st["unique"] < expected
                return st
            time.sleep(0.1)

    def report(self, keys: bool = False) -> dict[str, Any]:
        answers = self.fleet_call("report", 120, keys=keys)
        out: dict[str, Any] = {
            k: sum(a[k] for a in answers)
            for k in (
                "received",
                "unique",
                "dup",
                "misdelivered",
                "open",
                "empty",
                "retain_flag",
                "bad",
                "late",
            )
        }
        out["last_unique"] = max(a["last_unique"] for a in answers)
        firsts = [a["first_rx"] for a in answers if a["first_rx"]]
        out["first_rx"] = min(firsts) if firsts else 0.0
        lat = array("d")
        for a in answers:
            lat.frombytes(a["lat"])
        out["lat"] = lat
        if keys:
            out["keys"] = [tuple(key) for a in answers for key in a["keys"]]
        return out

    def disconnect(self, indices: list[int] | None = None, timeout: float = 30.0) -> int:
        answers = self.fleet_call("disconnect", timeout + 10, indices=indices, timeout=timeout)
        return sum(a["closed"] for a in answers)


def percentile(values: array[float] | list[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank) of ``values``, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Row:
    """One measured number: what, on which broker, at which size, and its accounting."""

    scenario: str
    broker: str
    n: int
    metric: str
    value: float | None
    unit: str
    expected: int | None = None
    received: int | None = None
    lost: int | None = None
    dup: int | None = None
    misdelivered: int | None = None
    error: str | None = None
    ratio_vs_mosquitto: float | None = None
    higher_is_better: bool = True
    broker_cpu_pct: float | None = None
    """CPU the broker used while this was measured, % of one core."""
    clients_cpu_pct: float | None = None
    """CPU all client processes used together, % of one core."""
    other_cpu_pct: float | None = None
    """CPU the rest of the machine used meanwhile (kernel softirq, other programs), % of one core."""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "broker": self.broker,
            "n": self.n,
            "metric": self.metric,
            "value": _round(self.value),
            "unit": self.unit,
            "expected": self.expected,
            "received": self.received,
            "lost": self.lost,
            "dup": self.dup,
            "misdelivered": self.misdelivered,
            "ratio_vs_mosquitto": _round(self.ratio_vs_mosquitto),
            "higher_is_better": self.higher_is_better,
            "broker_cpu_pct": _round(self.broker_cpu_pct),
            "clients_cpu_pct": _round(self.clients_cpu_pct),
            "other_cpu_pct": _round(self.other_cpu_pct),
            "error": self.error,
            "extra": {k: _round(v) if isinstance(v, float) else v for k, v in self.extra.items()},
        }


def _round(v: float | None) -> float | None:
    if v is None:
        return None
    if v == 0 or not math.isfinite(v):
        return v
    digits = max(0, 3 - math.floor(math.log10(abs(v))))
    return round(v, digits)


@dataclass
class Accounting:
    """Exactly-once accounting of one measurement, shared by the rows it produces."""

    expected: int | None = None
    received: int | None = None
    lost: int | None = None
    dup: int | None = None
    misdelivered: int | None = None

    @classmethod
    def of(cls, expected: int, report: dict[str, Any]) -> Accounting:
        unique = int(report["unique"])
        return cls(
            expected, unique, max(0, expected - unique), int(report["dup"]), int(report["misdelivered"])
        )


class Recorder:
    """Collects the rows of one (scenario, broker, N) measurement."""

    def __init__(self, scenario: str, broker: str, n: int) -> None:
        self.scenario, self.broker, self.n = scenario, broker, n
        self.rows: list[Row] = []
        self.extra: dict[str, Any] = {}
        self.cpu: tuple[float, float, float] | None = None
        """(broker %, clients %, rest of the machine %) of the phase being recorded; set by
        ``scenarios.Cpu.stop``."""

    def add(
        self,
        metric: str,
        value: float | None,
        unit: str,
        acct: Accounting | None = None,
        *,
        higher_is_better: bool = True,
        error: str | None = None,
    ) -> None:
        a = acct or Accounting()
        self.rows.append(
            Row(
                self.scenario,
                self.broker,
                self.n,
                metric,
                value,
                unit,
                a.expected,
                a.received,
                a.lost,
                a.dup,
                a.misdelivered,
                error,
                higher_is_better=higher_is_better,
                broker_cpu_pct=self.cpu[0] if self.cpu else None,
                clients_cpu_pct=self.cpu[1] if self.cpu else None,
                other_cpu_pct=self.cpu[2] if self.cpu else None,
            )
        )

    def fail(self, error: str) -> None:
        """The measurement stopped with ``error``: rows recorded so far stay, one error row follows."""
        self.rows.append(Row(self.scenario, self.broker, self.n, "(run)", None, "", error=error))

    def finish(self) -> list[Row]:
        for row in self.rows:
            row.extra = dict(self.extra) | row.extra
        return self.rows
