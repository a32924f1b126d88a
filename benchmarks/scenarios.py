"""The scenarios. Each measurement starts its own broker and client processes and stops them.

Topic shapes are those of the device protocol (docs/protocol.md) on both brokers:
``mqttpush/{app}/d/{device}/m/+`` (inbox), ``mqttpush/{app}/b/+`` (broadcast). On mqttpush
devices log in with their credentials and the raw publisher is the service account; on
mosquitto everything is anonymous.
"""

from __future__ import annotations

import contextlib
import functools
import time
import traceback
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

from benchmarks.harness import Accounting, Clients, Recorder, Row, Worker, percentile
from benchmarks.procs import (
    Broker,
    Fleet,
    HarnessError,
    listen_overflows,
    machine_busy_seconds,
    make_fleet,
    start_mosquitto,
    start_mqttpush,
)

SCENARIOS = ("unicast", "broadcast", "retained", "idle", "product", "knee", "large")
BROKERS = ("mqttpush", "mosquitto")
UNBOUNDED = 10**9


class Skipped(Exception):
    """Not enough of the run's time budget left to start this measurement."""


@dataclass(frozen=True)
class Settings:
    """Sizes and time caps; :meth:`quick` and :meth:`full` are the two presets."""

    unicast_sizes: tuple[int, ...]
    unicast_seconds: float
    drain_seconds: float
    quiet_seconds: float
    latency_count: int
    latency_seconds: float
    broadcast_n: int
    broadcast_messages: int
    broadcast_seconds: float
    retained_sizes: tuple[int, ...]
    idle_n: int
    reconnect_n: int
    product_devices: int
    product_seconds: float
    list_pushes: int
    large_n: int
    large_seconds: float
    knee_rates: tuple[int, ...] = (250, 500, 750, 1000, 1250, 1500, 2000, 3000)
    """Offered push rates (a second, open loop, all pushers) of the knee scenario, lowest first."""
    knee_seconds: float = 5.0
    connect_timeout: float = 300.0
    """Cap on connecting a whole fleet (each connection gets 60 s)."""
    connect_concurrency: int = 48
    """CONNECTs in flight per client process while setting up (the storms use 0 = all at once)."""
    window: int = 1000
    """Unacknowledged QoS 1 publishes the raw publisher keeps in flight."""
    e2e_window: int = 2000
    """Messages the raw publisher keeps sent-but-not-yet-received (bounds broker queues)."""
    broadcast_e2e: int = 10
    payload_size: int = 200
    pushers: int = 2
    product_inflight: int = 64
    """HTTP pushes outstanding at once in the product path's concurrent phase (all pushers)."""
    large_sample: int = 100
    """Devices online during the large task, checking exactly-once delivery and its delay."""

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            unicast_sizes=(100, 1000),
            unicast_seconds=5,
            drain_seconds=20,
            quiet_seconds=8,
            latency_count=100,
            latency_seconds=3,
            broadcast_n=1000,
            broadcast_messages=50,
            broadcast_seconds=5,
            retained_sizes=(1000,),
            idle_n=2000,
            reconnect_n=1000,
            product_devices=1000,
            product_seconds=5,
            list_pushes=4,
            large_n=20000,
            large_seconds=180,
            knee_rates=(250, 500, 1000, 1500, 2000, 3000),
            knee_seconds=4,
        )

    @classmethod
    def full(cls) -> Settings:
        return cls(
            unicast_sizes=(100, 1000, 5000, 10000),
            unicast_seconds=10,
            drain_seconds=30,
            quiet_seconds=10,
            latency_count=200,
            latency_seconds=5,
            broadcast_n=1000,
            broadcast_messages=200,
            broadcast_seconds=10,
            retained_sizes=(1000, 5000),
            idle_n=10000,
            reconnect_n=5000,
            product_devices=1000,
            product_seconds=15,
            list_pushes=20,
            large_n=100000,
            large_seconds=420,
        )

    def shared_devices(self, scenarios: tuple[str, ...]) -> int:
        """How many devices the raw-broker scenarios need in the shared data dir."""
        need = {
            "unicast": max(self.unicast_sizes),
            "broadcast": self.broadcast_n,
            "retained": max(self.retained_sizes),
            "idle": self.idle_n,
        }
        return max((need[s] for s in scenarios if s in need), default=0)


@dataclass
class Context:
    settings: Settings
    scenarios: tuple[str, ...]
    workroot: Path
    deadline: float
    mp: SpawnContext
    log: Callable[[str], None]
    _shared: Fleet | None = field(default=None, repr=False)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def cap(self, seconds: float) -> float:
        """``seconds``, or what is left of the run's budget if that is less."""
        left = self.remaining()
        if left < 5:
            raise Skipped(f"skipped: --max-seconds budget exhausted ({left:.0f}s left)")
        return min(seconds, left)

    def shared_fleet(self) -> Fleet:
        if self._shared is None:
            count = self.settings.shared_devices(self.scenarios)
            self.log(f"importing {count} devices into the shared data dir")
            self._shared = make_fleet(self.workroot / "shared", count, timeout=self.cap(600))
        return self._shared


# --- helpers ---------------------------------------------------------------------------------------


def inbox_filter(app: str, device: str) -> str:
    return f"mqttpush/{app}/d/{device}/m/+"


def broadcast_filter(app: str) -> str:
    return f"mqttpush/{app}/b/+"


def device_specs(
    fleet: Fleet,
    kind: str,
    count: int,
    filters: Callable[[str], list[str]],
    receipts: bool = False,
) -> list[tuple[Any, ...]]:
    """``(index, client_id, username, password, filters, receipt_topic)`` for the first ``count`` devices."""
    out = []
    for i, d in enumerate(fleet.devices[:count]):
        user, pw = (d.device_id, d.token) if kind == "mqttpush" else (None, None)
        receipt = f"mqttpush/{fleet.app_key}/d/{d.device_id}/r" if receipts else None
        out.append((i, d.device_id, user, pw, filters(d.device_id), receipt))
    return out


def publisher_login(fleet: Fleet, kind: str) -> dict[str, str | None]:
    if kind == "mqttpush":
        return {"username": fleet.service_user, "password": fleet.service_password}
    return {"username": None, "password": None}


@contextlib.contextmanager
def running(ctx: Context, rec: Recorder, kind: str, data_dir: Path) -> Iterator[Broker]:
    """A fresh broker for one measurement; its log's warnings and errors go to ``rec.extra``."""
    broker = start_mqttpush(data_dir) if kind == "mqttpush" else start_mosquitto(ctx.workroot)
    try:
        yield broker
        if not broker.alive():
            raise HarnessError(f"{kind} exited with code {broker.proc.returncode}: {broker.stderr_tail()}")
    finally:
        broker.stop()
        problems = broker.log_problems()
        if problems:
            rec.extra["broker_log"] = problems


def require_connected(conn: dict[str, Any], n: int, what: str = "connect") -> None:
    if conn["connected"] < n or (conn["subscribed"] < n and conn["subscribed"] != 0) or conn["sub_refused"]:
        raise HarnessError(
            f"{what}: {conn['connected']}/{n} connected, {conn['subscribed']} subscribed,"
            f" {conn['sub_refused']} subscriptions refused; errors {conn['errors']}"
        )


class Cpu:
    """CPU seconds used by the broker and by the client processes between start and :meth:`stop`."""

    def __init__(self, broker: Broker, clients: Clients) -> None:
        self.broker, self.clients = broker, clients
        self.b0, self.c0, self.t0 = broker.cpu_seconds(), clients.cpu_seconds(), time.monotonic()
        self.parts0 = broker.cpu_parts()
        self.m0 = machine_busy_seconds()

    def stop(self, rec: Recorder, prefix: str = "") -> None:
        """Record the phase's CPU in ``rec.extra``; the rows added next carry it as percentages."""
        wall = time.monotonic() - self.t0
        broker = self.broker.cpu_seconds() - self.b0
        clients = self.clients.cpu_seconds() - self.c0
        other = max(0.0, machine_busy_seconds() - self.m0 - broker - clients)
        rec.extra[prefix + "wall_s"] = wall
        rec.extra[prefix + "broker_cpu_s"] = broker
        parts = self.broker.cpu_parts()
        if len(parts) > 1:  # serve's two processes: API + bridge + store, and the broker
            for name, seconds in parts.items():
                rec.extra[f"{prefix}server_{name}_cpu_s"] = seconds - self.parts0.get(name, 0.0)
        rec.extra[prefix + "clients_cpu_s"] = clients
        rec.extra[prefix + "other_cpu_s"] = other
        rec.cpu = (100 * broker / wall, 100 * clients / wall, 100 * other / wall) if wall > 0 else None


def _delta(after: int | None, before: int | None) -> int | None:
    return None if after is None or before is None else after - before


def ms(v: float | None) -> float | None:
    return None if v is None else v * 1000


def measure(ctx: Context, scenario: str, kind: str, n: int, fn: Callable[[Recorder], None]) -> list[Row]:
    """Run one measurement; a failure becomes an error row and the run goes on."""
    rec = Recorder(scenario, kind, n)
    t0 = time.monotonic()
    ctx.log(f"{scenario:<9} {kind:<9} n={n} ...")
    try:
        ctx.cap(1)
        fn(rec)
    except Skipped as exc:
        rec.fail(str(exc))
    except Exception as exc:
        rec.fail(f"{type(exc).__name__}: {exc}"[:600])
        ctx.log(traceback.format_exc(limit=6))
    rec.extra["seconds"] = time.monotonic() - t0
    rows = rec.finish()
    ctx.log(f"{scenario:<9} {kind:<9} n={n} done in {rec.extra['seconds']:.1f}s")
    return rows


# --- 1. unicast ------------------------------------------------------------------------------------


def unicast(ctx: Context) -> list[Row]:
    fleet = ctx.shared_fleet()
    rows = []
    for n in ctx.settings.unicast_sizes:
        for kind in BROKERS:
            rows += measure(
                ctx, "unicast", kind, n, functools.partial(_unicast, ctx, kind=kind, fleet=fleet, n=n)
            )
    return rows


def _unicast(ctx: Context, rec: Recorder, kind: str, fleet: Fleet, n: int) -> None:
    s = ctx.settings
    with running(ctx, rec, kind, fleet.data_dir) as broker, Clients(ctx.mp) as clients:
        specs = device_specs(fleet, kind, n, lambda d: [inbox_filter(fleet.app_key, d)])
        conn = clients.connect(broker.mqtt_port, specs, ctx.cap(s.connect_timeout), s.connect_concurrency)
        require_connected(conn, n)
        rec.extra["setup_connect_s"] = conn["t_done"] - conn["t0"]
        clients.reset("seq")
        publisher = clients.publisher
        assert publisher is not None
        targets = [d.device_id for d in fleet.devices[:n]]
        common = {"port": broker.mqtt_port, "app": fleet.app_key, "targets": targets} | publisher_login(
            fleet, kind
        )
        cpu = Cpu(broker, clients)
        pub = publisher.call(
            "publish",
            ctx.cap(s.unicast_seconds + 60),
            **common,
            mode="unicast",
            count=UNBOUNDED,
            duration=s.unicast_seconds,
            window=s.window,
            e2e_window=s.e2e_window,
            payload_size=s.payload_size,
        )
        clients.wait_unique(pub["sent"], ctx.cap(s.drain_seconds), s.quiet_seconds)
        rep = clients.report()
        cpu.stop(rec)
        acct = Accounting.of(pub["sent"], rep)
        rec.extra |= {"published": pub["sent"], "pubacked": pub["acked"], "retain_flag": rep["retain_flag"]}
        span = rep["last_unique"] - pub["t_start"] if rep["unique"] else 0
        rec.add("delivered", rep["unique"] / span if span > 0 else 0.0, "msg/s", acct)
        lat = rep["lat"]
        rec.add("latency p50 (loaded)", ms(percentile(lat, 50)), "ms", acct, higher_is_better=False)
        rec.add("latency p99 (loaded)", ms(percentile(lat, 99)), "ms", acct, higher_is_better=False)

        # Unloaded latency: one message in flight at a time.
        seq0 = pub["sent"] + 1
        clients.reset("seq", min_seq=seq0)
        cpu = Cpu(broker, clients)
        pub2 = publisher.call(
            "publish",
            ctx.cap(s.latency_seconds + 40),
            **common,
            mode="unicast",
            count=s.latency_count,
            duration=s.latency_seconds,
            window=1,
            e2e_window=1,
            seq_start=seq0,
            payload_size=s.payload_size,
        )
        clients.wait_unique(pub2["sent"], ctx.cap(15), 5)
        rep2 = clients.report()
        cpu.stop(rec, "unloaded_")
        acct2 = Accounting.of(pub2["sent"], rep2)
        rec.extra["late_from_loaded_phase"] = rep2["late"]
        lat2 = rep2["lat"]
        rec.add("latency p50 (1 in flight)", ms(percentile(lat2, 50)), "ms", acct2, higher_is_better=False)
        rec.add("latency p99 (1 in flight)", ms(percentile(lat2, 99)), "ms", acct2, higher_is_better=False)
        rec.extra["broker_rss_mib"] = broker.rss_kb() / 1024


# --- 2. broadcast ----------------------------------------------------------------------------------


def broadcast(ctx: Context) -> list[Row]:
    fleet = ctx.shared_fleet()
    n = ctx.settings.broadcast_n
    return [
        row
        for kind in BROKERS
        for row in measure(
            ctx, "broadcast", kind, n, functools.partial(_broadcast, ctx, kind=kind, fleet=fleet, n=n)
        )
    ]


def _broadcast(ctx: Context, rec: Recorder, kind: str, fleet: Fleet, n: int) -> None:
    s = ctx.settings
    with running(ctx, rec, kind, fleet.data_dir) as broker, Clients(ctx.mp) as clients:
        specs = device_specs(fleet, kind, n, lambda _d: [broadcast_filter(fleet.app_key)])
        conn = clients.connect(broker.mqtt_port, specs, ctx.cap(s.connect_timeout), s.connect_concurrency)
        require_connected(conn, n)
        clients.reset("seq")
        assert clients.publisher is not None
        cpu = Cpu(broker, clients)
        pub = clients.publisher.call(
            "publish",
            ctx.cap(s.broadcast_seconds + 60),
            port=broker.mqtt_port,
            app=fleet.app_key,
            targets=[],
            mode="broadcast",
            count=s.broadcast_messages,
            duration=s.broadcast_seconds,
            window=s.window,
            e2e_window=s.broadcast_e2e,
            fanout=n,
            payload_size=s.payload_size,
            **publisher_login(fleet, kind),
        )
        expected = pub["sent"] * n
        clients.wait_unique(expected, ctx.cap(s.drain_seconds), s.quiet_seconds)
        rep = clients.report()
        cpu.stop(rec)
        acct = Accounting.of(expected, rep)
        rec.extra |= {"messages": pub["sent"], "pubacked": pub["acked"]}
        span = rep["last_unique"] - pub["t_start"] if rep["unique"] else 0
        rec.add("deliveries", rep["unique"] / span if span > 0 else 0.0, "msg/s", acct)
        rec.add("latency p50", ms(percentile(rep["lat"], 50)), "ms", acct, higher_is_better=False)
        rec.add("latency p99", ms(percentile(rep["lat"], 99)), "ms", acct, higher_is_better=False)


# --- 3. retained backlog ---------------------------------------------------------------------------


def retained(ctx: Context) -> list[Row]:
    fleet = ctx.shared_fleet()
    rows = []
    for n in ctx.settings.retained_sizes:
        for kind in BROKERS:
            rows += measure(
                ctx, "retained", kind, n, functools.partial(_retained, ctx, kind=kind, fleet=fleet, n=n)
            )
    return rows


def _retained(ctx: Context, rec: Recorder, kind: str, fleet: Fleet, n: int) -> None:
    s = ctx.settings
    with running(ctx, rec, kind, fleet.data_dir) as broker, Clients(ctx.mp) as clients:
        assert clients.publisher is not None
        pub = clients.publisher.call(
            "publish",
            ctx.cap(180),
            port=broker.mqtt_port,
            app=fleet.app_key,
            targets=[d.device_id for d in fleet.devices[:n]],
            mode="retained",
            count=n,
            duration=ctx.cap(120),
            window=s.window,
            retain=True,
            payload_size=s.payload_size,
            **publisher_login(fleet, kind),
        )
        if pub["acked"] < n:
            raise HarnessError(f"only {pub['acked']}/{n} retained publishes acknowledged")
        rec.add("retained publish (no subscribers)", n / (pub["t_acked"] - pub["t_start"]), "msg/s")
        clients.reset("seq")
        cpu = Cpu(broker, clients)
        specs = device_specs(fleet, kind, n, lambda d: [inbox_filter(fleet.app_key, d)])
        overflows = listen_overflows()
        conn = clients.connect(broker.mqtt_port, specs, ctx.cap(s.connect_timeout), concurrency=0)
        rec.extra["listen_overflows"] = _delta(listen_overflows(), overflows)
        clients.wait_unique(n, ctx.cap(s.drain_seconds + 60), s.quiet_seconds)
        rep = clients.report()
        cpu.stop(rec)
        acct = Accounting.of(n, rep)
        rec.extra |= {
            "connected": conn["connected"],
            "connect_errors": conn["errors"],
            "retain_flag": rep["retain_flag"],
        }
        drain = rep["last_unique"] - conn["t0"] if rep["unique"] else None
        rec.add("drain (all connect at once)", drain, "s", acct, higher_is_better=False)
        done = conn["t_suback_last"]
        rec.add(
            "connect+subscribe all", done - conn["t0"] if done else None, "s", acct, higher_is_better=False
        )


# --- 4. idle connections ---------------------------------------------------------------------------


def idle(ctx: Context) -> list[Row]:
    fleet = ctx.shared_fleet()
    n = ctx.settings.idle_n
    return [
        row
        for kind in BROKERS
        for row in measure(ctx, "idle", kind, n, functools.partial(_idle, ctx, kind=kind, fleet=fleet, n=n))
    ]


def _idle(ctx: Context, rec: Recorder, kind: str, fleet: Fleet, n: int) -> None:
    s = ctx.settings
    r = min(s.reconnect_n, n)
    with running(ctx, rec, kind, fleet.data_dir) as broker, Clients(ctx.mp, publisher=False) as clients:
        time.sleep(1.0)
        rss0 = broker.rss_kb()
        specs = device_specs(
            fleet, kind, n, lambda d: [inbox_filter(fleet.app_key, d), broadcast_filter(fleet.app_key)]
        )
        cpu = Cpu(broker, clients)
        conn = clients.connect(broker.mqtt_port, specs, ctx.cap(s.connect_timeout), s.connect_concurrency)
        cpu.stop(rec, "connect_")
        require_connected(conn, n)
        rec.add(
            f"connect+subscribe ({s.connect_concurrency}/process in flight)",
            n / (conn["t_suback_last"] - conn["t0"]),
            "conn/s",
        )
        time.sleep(2.0)
        rss1 = broker.rss_kb()
        rec.extra |= {"rss_before_kib": rss0, "rss_after_kib": rss1}
        rec.cpu = None
        rec.add("broker RSS, idle", rss0 / 1024, "MiB", higher_is_better=False)
        rec.add(f"broker RSS, {n} connected", rss1 / 1024, "MiB", higher_is_better=False)
        rec.add("memory per connection", (rss1 - rss0) / n, "KiB", higher_is_better=False)

        clients.disconnect(list(range(r)))
        time.sleep(2.0)
        status = clients.status()
        rec.extra["open_after_disconnect"] = status["open"]
        cpu = Cpu(broker, clients)
        overflows = listen_overflows()
        again = clients.connect(broker.mqtt_port, specs[:r], ctx.cap(s.connect_timeout), concurrency=0)
        rec.extra["reconnect_listen_overflows"] = _delta(listen_overflows(), overflows)
        cpu.stop(rec, "reconnect_")
        rec.extra["reconnect_errors"] = again["errors"]
        acct = Accounting(expected=r, received=again["connected"], lost=r - again["connected"])
        rec.add(
            f"reconnect {r} at once: all CONNACKs",
            again["t_connack_last"] - again["t0"] if again["t_connack_last"] else None,
            "s",
            acct,
            higher_is_better=False,
        )
        rec.add(
            f"reconnect {r} at once: all SUBACKs",
            again["t_suback_last"] - again["t0"] if again["t_suback_last"] else None,
            "s",
            acct,
            higher_is_better=False,
        )
        require_connected(again, r, "reconnect")


# --- 5. product path (mqttpush only) ---------------------------------------------------------------


def product(ctx: Context) -> list[Row]:
    n = ctx.settings.product_devices
    return measure(ctx, "product", "mqttpush", n, lambda rec: _product(ctx, rec, n))


def _push_all(
    ctx: Context, clients: Clients, timeout: float, pushers: int | None = None, **args: Any
) -> list[dict[str, Any]]:
    workers: list[Worker] = clients.pushers[:pushers]
    count = args.pop("count")
    per = -(-count // len(workers)) if count < UNBOUNDED else UNBOUNDED
    clients.pushed.value = 0
    base = clients.delivered()
    for k, w in enumerate(workers):
        w.send("push", **args, count=per, seq_start=k * 10**8, base_delivered=base)
    deadline = time.monotonic() + timeout
    return [w.recv(max(1.0, deadline - time.monotonic())) for w in workers]


def _product_phase(
    ctx: Context,
    rec: Recorder,
    broker: Broker,
    clients: Clients,
    label: str,
    mode: str,
    devices: list[tuple[int, str]],
    push_args: dict[str, Any],
    pushers: int | None = None,
) -> None:
    s = ctx.settings
    clients.reset("envelope", receipts=True)
    cpu = Cpu(broker, clients)
    timeout = ctx.cap(push_args["duration"] + 60)
    answers = _push_all(ctx, clients, timeout, pushers, mode=mode, devices=devices, **push_args)
    accepted = [tuple(a) for ans in answers for a in ans["accepted"]]
    errors: dict[str, int] = {}
    for ans in answers:
        for k, v in ans["errors"].items():
            errors[k] = errors.get(k, 0) + v
    if mode == "single":
        expected = {(gidx, mid) for mid, gidx in accepted}
    else:
        expected = {(gidx, mid) for mid, _ in accepted for gidx, _d in devices}
    clients.wait_unique(len(expected), ctx.cap(s.drain_seconds + 30), s.quiet_seconds)
    rep = clients.report(keys=True)
    cpu.stop(rec, f"{label}_")
    got = set(rep["keys"])
    acct = Accounting(
        len(expected),
        len(got & expected),
        len(expected - got),
        rep["dup"],
        len(got - expected) + rep["misdelivered"],
    )
    t_start = min(a["t_start"] for a in answers)
    t_end = max(a["t_end"] for a in answers)
    accept_lat = array("d")
    for ans in answers:
        accept_lat.frombytes(ans["accept_lat"])
    rec.extra[f"{label}_http_errors"] = errors
    rec.extra[f"{label}_pushes_accepted"] = len(accepted)
    rec.add(f"{label}: HTTP pushes accepted", len(accepted) / (t_end - t_start), "req/s", acct)
    span = rep["last_unique"] - t_start if rep["unique"] else 0
    rec.add(f"{label}: delivered", rep["unique"] / span if span > 0 else 0.0, "msg/s", acct)
    rec.add(f"{label}: accept p50", ms(percentile(accept_lat, 50)), "ms", acct, higher_is_better=False)
    rec.add(f"{label}: accept p99", ms(percentile(accept_lat, 99)), "ms", acct, higher_is_better=False)
    rec.add(f"{label}: end-to-end p50", ms(percentile(rep["lat"], 50)), "ms", acct, higher_is_better=False)
    rec.add(f"{label}: end-to-end p99", ms(percentile(rep["lat"], 99)), "ms", acct, higher_is_better=False)


def _product(ctx: Context, rec: Recorder, n: int) -> None:
    s = ctx.settings
    fleet = make_fleet(ctx.workroot / "product", n, timeout=ctx.cap(300))
    with (
        running(ctx, rec, "mqttpush", fleet.data_dir) as broker,
        Clients(ctx.mp, publisher=False, pushers=s.pushers) as clients,
    ):
        specs = device_specs(
            fleet,
            "mqttpush",
            n,
            lambda d: [inbox_filter(fleet.app_key, d), broadcast_filter(fleet.app_key)],
            receipts=True,
        )
        conn = clients.connect(broker.mqtt_port, specs, ctx.cap(s.connect_timeout), s.connect_concurrency)
        require_connected(conn, n)
        assert broker.http_url is not None
        login = {"url": broker.http_url, "app_key": fleet.app_key, "app_secret": fleet.app_secret}
        devices = [(i, d.device_id) for i, d in enumerate(fleet.devices)]
        one = {"count": UNBOUNDED, "duration": s.product_seconds, "inflight": 1}
        many = {
            "count": UNBOUNDED,
            "duration": s.product_seconds,
            "inflight": s.product_inflight // s.pushers,
        }
        lists = {"count": s.list_pushes, "duration": s.product_seconds * 4, "inflight": 1, "fanout": n}
        # One in flight: the latency of the whole path when nothing queues.
        _product_phase(ctx, rec, broker, clients, "1 in flight", "single", devices, login | one, pushers=1)
        # Many in flight, open-ended: accepted/s beside delivered/s shows whether a backlog grows.
        _product_phase(
            ctx, rec, broker, clients, f"{s.product_inflight} in flight", "single", devices, login | many
        )
        lists |= {"e2e_window": 2}
        _product_phase(ctx, rec, broker, clients, f"list of {n}", "list", devices, login | lists)
        rec.extra["broker_rss_mib"] = broker.rss_kb() / 1024


# --- 6. the knee: offered rate against delivered rate (mqttpush only) ---------------------------


def knee(ctx: Context) -> list[Row]:
    n = ctx.settings.product_devices
    return measure(ctx, "knee", "mqttpush", n, lambda rec: _knee(ctx, rec, n))


def _knee(ctx: Context, rec: Recorder, n: int) -> None:
    """Signed single-device pushes offered open-loop at rising rates to 1,000 listening devices that
    send receipts; per step what the API accepted and refused (503 ``overloaded`` past
    ``--max-publish-lag``) and what reached devices, how fast. The knee is the first offered rate the
    path does not carry: delivered below 95 % of offered, or pushes refused."""
    s = ctx.settings
    fleet = make_fleet(ctx.workroot / "knee", n, timeout=ctx.cap(300))
    with (
        running(ctx, rec, "mqttpush", fleet.data_dir) as broker,
        Clients(ctx.mp, publisher=False, pushers=s.pushers) as clients,
    ):
        specs = device_specs(fleet, "mqttpush", n, lambda d: [inbox_filter(fleet.app_key, d)], receipts=True)
        conn = clients.connect(broker.mqtt_port, specs, ctx.cap(s.connect_timeout), s.connect_concurrency)
        require_connected(conn, n)
        assert broker.http_url is not None
        login = {"url": broker.http_url, "app_key": fleet.app_key, "app_secret": fleet.app_secret}
        devices = [(i, d.device_id) for i, d in enumerate(fleet.devices)]
        knee_at: int | None = None
        for rate in s.knee_rates:
            label = f"offered {rate}/s"
            if ctx.remaining() < s.knee_seconds + 30:
                rec.add(f"{label}: delivered", None, "msg/s", error="skipped: out of time")
                continue
            step = {
                "count": UNBOUNDED,
                "duration": s.knee_seconds,
                "inflight": s.product_inflight // s.pushers,
                "rate": rate / s.pushers,
            }
            _product_phase(ctx, rec, broker, clients, label, "single", devices, login | step)
            errors = rec.extra[f"{label}_http_errors"]
            refused = sum(v for k, v in errors.items() if k.startswith(("503", "429")))
            rec.add(f"{label}: refused (503/429)", refused / s.knee_seconds, "req/s", higher_is_better=False)
            delivered = next(r.value for r in reversed(rec.rows) if r.metric == f"{label}: delivered") or 0.0
            if knee_at is None and (refused or delivered < 0.95 * rate):
                knee_at = rate
        rec.add("knee: first offered rate not carried", knee_at, "msg/s")


# --- 6. large task (mqttpush only) -----------------------------------------------------------------


def large(ctx: Context) -> list[Row]:
    n = ctx.settings.large_n
    return measure(ctx, "large", "mqttpush", n, lambda rec: _large(ctx, rec, n))


def _large(ctx: Context, rec: Recorder, n: int) -> None:
    from mqttpush.client import PushClient

    s = ctx.settings
    fleet = make_fleet(ctx.workroot / "large", n, tags=["all"], timeout=ctx.cap(900))
    rec.add("device import (CLI)", n / fleet.import_seconds, "devices/s")
    sample = min(s.large_sample, n)
    with running(ctx, rec, "mqttpush", fleet.data_dir) as broker, Clients(ctx.mp, publisher=False) as clients:
        specs = device_specs(
            fleet,
            "mqttpush",
            sample,
            lambda d: [inbox_filter(fleet.app_key, d), broadcast_filter(fleet.app_key)],
        )
        conn = clients.connect(broker.mqtt_port, specs, ctx.cap(s.connect_timeout), s.connect_concurrency)
        require_connected(conn, sample)
        clients.reset("envelope")
        assert broker.http_url is not None
        cpu = Cpu(broker, clients)
        with PushClient(broker.http_url, fleet.app_key, fleet.app_secret, timeout=60) as client:
            t0 = time.monotonic()
            accepted = client.push(
                {
                    "target": {"tags": "all"},
                    "notification": {"title": "bench", "body": "large task"},
                    "data": {"seq": 0, "t": t0},
                }
            )
            accept_s = time.monotonic() - t0
            task_id, msg_id = accepted["task_id"], accepted.get("msg_id")
            deadline = time.monotonic() + ctx.cap(s.large_seconds)
            done_at = published_at = None
            task: dict[str, Any] = {}
            while time.monotonic() < deadline:
                task = client.task(task_id)
                now = time.monotonic()
                if done_at is None and task["state"] == "done":
                    done_at = now - t0
                if published_at is None and task["published"] >= n:
                    published_at = now - t0
                if (done_at is not None and published_at is not None) or task["state"] in (
                    "failed",
                    "cancelled",
                ):
                    break
                time.sleep(0.2)
        cpu.stop(rec)
        published = int(task.get("published", 0))
        acct = Accounting(expected=n, received=published, lost=n - published)
        rec.extra |= {"task": task, "broker_rss_mib": broker.rss_kb() / 1024}
        rec.add("push accept latency", accept_s * 1000, "ms", acct, higher_is_better=False)
        rec.add("task state done", done_at, "s", acct, higher_is_better=False)
        rec.add(f"published == {n}", published_at, "s", acct, higher_is_better=False)
        rec.add("publish rate", published / published_at if published_at else None, "msg/s", acct)
        if task.get("state") != "done" or published < n:
            rec.fail(f"task {task.get('state')} with {published}/{n} published within the cap")
        # The store says "published" when the broker took the message; the online devices show
        # when it actually left the broker.
        clients.wait_unique(sample, ctx.cap(s.large_seconds / 2), 30)
        rep = clients.report(keys=True)
        expected = {(i, msg_id) for i in range(sample)}
        got = set(rep["keys"])
        sacct = Accounting(
            sample,
            len(got & expected),
            len(expected - got),
            rep["dup"],
            len(got - expected) + rep["misdelivered"],
        )
        rec.add(
            f"online sample of {sample}: all delivered after",
            rep["last_unique"] - t0 if rep["unique"] else None,
            "s",
            sacct,
            higher_is_better=False,
        )


RUNNERS: dict[str, Callable[[Context], list[Row]]] = {
    "unicast": unicast,
    "broadcast": broadcast,
    "retained": retained,
    "idle": idle,
    "product": product,
    "knee": knee,
    "large": large,
}
