"""Load generators and receivers, each in its own process, driven by the harness over a pipe.

Roles:

* ``fleet``: holds many device connections (lean asyncio client), counts every PUBLISH it
  receives and keeps exactly-once accounting (unique / duplicate / misdelivered, by message id)
  and end-to-end latencies from the send time in the payload.
* ``publisher``: one MQTT connection publishing QoS 1 as fast as a PUBACK window and an
  end-to-end window (messages sent but not yet received by the fleets, read from shared
  counters) allow.
* ``pusher``: signed HTTP API calls on lean keep-alive connections (``benchmarks/lean_http.py``),
  many in flight on one event loop.

Raw payloads start with ``b"<seq> <target> <monotonic send time> "`` (``target`` is the device
index a unicast message is meant for, -1 for broadcast); envelopes of the product path carry
``{"seq", "t"}`` in ``data`` and are keyed by their ``id``. ``time.monotonic()`` is the
system-wide CLOCK_MONOTONIC on Linux, so it compares across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection as Pipe
from typing import Any

from benchmarks.lean_http import HttpError, SignedConnection
from benchmarks.mqtt import Connection, ConnectRefused, open_connection, publish_packet
from benchmarks.procs import HOST, die_with_parent, raise_nofile_limit

KEYSPACE = 1 << 32  # broadcast dedupe key = device index * KEYSPACE + seq
PING_INTERVAL = 60.0
KEEPALIVE = 300

Counters = Sequence[Any]  # multiprocessing.RawValue("q") per fleet process


def pick(seq: int, n: int) -> int:
    """The device a unicast message ``seq`` goes to: a fixed pseudo-random choice (splitmix64)."""
    z = (seq + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) % n


def delivered(counters: Counters) -> int:
    return sum(int(c.value) for c in counters)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ConnectRefused):
        return f"CONNACK {exc.code}"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    return f"{type(exc).__name__}: {exc}"[:160]


# --- fleet ---------------------------------------------------------------------------------------


class FleetWorker:
    """Device connections and exactly-once accounting of what they receive."""

    def __init__(self, counter: Any, counters: Counters) -> None:
        self.counter = counter
        self.conns: dict[int, Connection] = {}
        self.receipt_topics: dict[int, bytes] = {}
        self._pinger: asyncio.Task[None] | None = None
        self.cmd_reset()

    def cmd_reset(self, mode: str = "seq", receipts: bool = False, min_seq: int = 0) -> dict[str, Any]:
        """Forget what was received; ``mode`` is ``seq`` (raw payloads) or ``envelope``. Raw
        messages with a seq below ``min_seq`` are counted as ``late`` (from an earlier phase)."""
        self.mode = mode
        self.receipts = receipts
        self.min_seq = min_seq
        self.late = 0
        self.received = 0
        self.unique = 0
        self.dup = 0
        self.misdelivered = 0
        self.empty = 0
        self.retain_flag = 0
        self.bad = 0
        self.seen: set[Any] = set()
        self.lat = array("d")
        self.first_rx = 0.0
        self.last_unique = 0.0
        return {}

    def on_publish(self, conn: Connection, topic: bytes, payload: bytes, qos: int, retain: bool) -> None:
        now = time.monotonic()
        self.received += 1
        self.counter.value += 1
        if not self.first_rx:
            self.first_rx = now
        if retain:
            self.retain_flag += 1
        if not payload:
            self.empty += 1  # a cleared retained inbox topic (foreign broker): devices ignore it
            return
        try:
            if self.mode == "envelope":
                env = json.loads(payload)
                key: Any = (conn.tag, env["id"])
                sent = float(env["data"]["t"])
                if self.receipts and conn.tag in self.receipt_topics:
                    receipt = json.dumps({"id": env["id"], "event": "arrived"}).encode()
                    conn.publish(self.receipt_topics[conn.tag], receipt, qos=1)
            else:
                seq_b, target_b, ts_b, _rest = payload.split(b" ", 3)
                target = int(target_b)
                if int(seq_b) < self.min_seq:
                    self.late += 1
                    return
                if target >= 0 and target != conn.tag:
                    self.misdelivered += 1
                    return
                key = int(seq_b) if target >= 0 else conn.tag * KEYSPACE + int(seq_b)
                sent = float(ts_b)
        except (ValueError, KeyError, TypeError):
            self.bad += 1
            return
        if key in self.seen:
            self.dup += 1
            return
        self.seen.add(key)
        self.unique += 1
        self.last_unique = now
        self.lat.append(now - sent)

    async def cmd_connect(
        self,
        port: int,
        devices: list[tuple[int, str, str | None, str | None, list[str], str | None]],
        concurrency: int = 0,
        clean: bool = True,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Connect (and subscribe) ``devices`` = ``[(index, client_id, username, password, filters,
        receipt_topic)]``, ``concurrency`` at a time (0: all at once)."""
        raise_nofile_limit()
        sem = asyncio.Semaphore(concurrency) if concurrency else None
        errors: Counter[str] = Counter()
        sub_refused = 0
        connacks: list[float] = []
        subacks: list[float] = []
        t0 = time.monotonic()

        async def one(index: int, cid: str, user: str | None, pw: str | None, filters: list[str]) -> None:
            nonlocal sub_refused
            old = self.conns.pop(index, None)
            if old is not None:
                old.abort()
            conn = await open_connection(
                HOST,
                port,
                cid,
                user,
                pw,
                keepalive=KEEPALIVE,
                clean=clean,
                timeout=timeout,
                on_publish=self.on_publish,
                tag=index,
            )
            connacks.append(time.monotonic())
            self.conns[index] = conn
            if filters:
                codes = await conn.subscribe(filters, 1, timeout)
                sub_refused += sum(1 for c in codes if c == 0x80)
                subacks.append(time.monotonic())

        async def guarded(spec: tuple[int, str, str | None, str | None, list[str], str | None]) -> None:
            index, cid, user, pw, filters, receipt = spec
            if receipt:
                self.receipt_topics[index] = receipt.encode()
            try:
                if sem is None:
                    await one(index, cid, user, pw, filters)
                else:
                    async with sem:
                        await one(index, cid, user, pw, filters)
            except Exception as exc:
                errors[_error_text(exc)] += 1

        await asyncio.gather(*(guarded(d) for d in devices))
        if self._pinger is None:
            self._pinger = asyncio.create_task(self._ping_loop())
        return {
            "requested": len(devices),
            "connected": len(connacks),
            "subscribed": len(subacks),
            "sub_refused": sub_refused,
            "errors": dict(errors),
            "t0": t0,
            "t_connack_last": max(connacks) if connacks else None,
            "t_suback_last": max(subacks) if subacks else None,
            "t_done": time.monotonic(),
        }

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(PING_INTERVAL)
            for i, conn in enumerate(list(self.conns.values())):
                conn.ping()
                if i % 500 == 499:
                    await asyncio.sleep(0)

    def cmd_status(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "unique": self.unique,
            "dup": self.dup,
            "misdelivered": self.misdelivered,
            "open": sum(1 for c in self.conns.values() if c.is_open),
            "last_unique": self.last_unique,
        }

    def cmd_report(self, keys: bool = False) -> dict[str, Any]:
        out = self.cmd_status() | {
            "empty": self.empty,
            "retain_flag": self.retain_flag,
            "bad": self.bad,
            "late": self.late,
            "first_rx": self.first_rx,
            "lat": self.lat.tobytes(),
        }
        if keys:
            out["keys"] = list(self.seen)
        return out

    async def cmd_disconnect(self, indices: list[int] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """Send DISCONNECT and close (all connections, or those of ``indices``)."""
        chosen = list(self.conns) if indices is None else [i for i in indices if i in self.conns]
        conns = [self.conns.pop(i) for i in chosen]
        for i, conn in enumerate(conns):
            conn.disconnect()
            if i % 500 == 499:
                await asyncio.sleep(0)
        pending = [c.closed for c in conns if not c.closed.done()]
        if pending:
            _done, _still = await asyncio.wait(pending, timeout=timeout)
            for c in conns:
                if not c.closed.done():
                    c.abort()
        return {"closed": len(conns)}


# --- publisher -----------------------------------------------------------------------------------


class PublisherWorker:
    """One MQTT connection publishing QoS 1 under a PUBACK window and an end-to-end window."""

    def __init__(self, counter: Any, counters: Counters) -> None:
        self.counters = counters
        self.inflight = 0
        self.acked = 0
        self.space = asyncio.Event()

    def _on_puback(self, _conn: Connection, _pid: int) -> None:
        self.inflight -= 1
        self.acked += 1
        self.space.set()

    async def cmd_publish(
        self,
        port: int,
        username: str | None,
        password: str | None,
        mode: str,
        app: str,
        targets: list[str],
        count: int,
        duration: float,
        window: int = 256,
        e2e_window: int = 0,
        fanout: int = 1,
        payload_size: int = 200,
        seq_start: int = 0,
        retain: bool = False,
        ack_timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Publish ``count`` messages (or for ``duration`` seconds) in ``mode`` ``unicast`` (to
        random devices' inbox topics), ``retained`` (one per device, in order) or ``broadcast``.
        ``e2e_window``: at most this many messages sent but not yet received (×``fanout``)."""
        self.inflight = 0
        self.acked = 0
        conn = await open_connection(
            HOST,
            port,
            f"bench-pub-{seq_start}",
            username,
            password,
            keepalive=KEEPALIVE,
            on_puback=self._on_puback,
        )
        prefixes = [f"mqttpush/{app}/d/{d}/m/".encode() for d in targets]
        bcast = f"mqttpush/{app}/b/".encode()
        n = len(prefixes)
        if mode in ("unicast", "retained") and not n:
            raise ValueError("no target devices")
        pad = b"x" * payload_size
        # pick() precomputed: the publisher's CPU is CPU the broker does not get on a small machine.
        table = [pick(i, n) for i in range(1 << 16)] if mode == "unicast" else []
        base = delivered(self.counters)
        sent = 0
        t_start = time.monotonic()
        deadline = t_start + duration
        while sent < count:
            now = time.monotonic()
            if now >= deadline or conn.closed.done():
                break
            budget = min(window - self.inflight, count - sent, 64)
            if e2e_window:
                outstanding = sent * fanout - (delivered(self.counters) - base)
                budget = min(budget, (e2e_window * fanout - outstanding) // fanout)
                if budget <= 0:
                    # Polling the shared counters: 2 ms is short against the window, cheap in CPU.
                    await asyncio.sleep(0.002)
                    continue
            if budget <= 0:
                self.space.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.space.wait(), max(0.001, deadline - now))
                continue
            chunks = []
            stamp = b"%.6f " % time.monotonic()
            for _ in range(budget):
                seq = seq_start + sent
                if mode == "unicast":
                    target = table[seq & 0xFFFF]
                    topic = prefixes[target] + b"%d" % seq
                elif mode == "retained":
                    target = sent % n
                    topic = prefixes[target] + b"r%d" % seq
                else:
                    target = -1
                    topic = bcast + b"%d" % seq
                head = b"%d %d " % (seq, target) + stamp
                payload = head + pad[: max(0, payload_size - len(head))]
                chunks.append(_publish(conn, topic, payload, retain))
                sent += 1
                self.inflight += 1
            conn.write(b"".join(chunks))
            await asyncio.sleep(0)
        t_end_send = time.monotonic()
        ack_deadline = t_end_send + ack_timeout
        while self.inflight > 0 and time.monotonic() < ack_deadline and not conn.closed.done():
            self.space.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.space.wait(), 0.5)
        lost_connection = conn.closed.done()
        conn.disconnect()
        return {
            "sent": sent,
            "acked": self.acked,
            "t_start": t_start,
            "t_end_send": t_end_send,
            "t_acked": time.monotonic(),
            "lost_connection": lost_connection,
        }


def _publish(conn: Connection, topic: bytes, payload: bytes, retain: bool) -> bytes:
    return publish_packet(topic, payload, qos=1, retain=retain, pid=conn.next_pid())


# --- HTTP pusher ---------------------------------------------------------------------------------


class PusherWorker:
    """Signed HTTP pushes with ``inflight`` requests outstanding, each on its own keep-alive
    connection (:class:`benchmarks.lean_http.SignedConnection`), on this process's event loop."""

    def __init__(self, counter: Any, counters: Counters) -> None:
        self.pushed = counter  # multiprocessing.Value("q"): pushes accepted by all pushers together
        self.counters = counters

    async def cmd_push(
        self,
        url: str,
        app_key: str,
        app_secret: str,
        mode: str,
        devices: list[tuple[int, str]],
        count: int,
        duration: float,
        inflight: int = 4,
        e2e_window: int = 0,
        fanout: int = 1,
        seq_start: int = 0,
        body_size: int = 100,
        base_delivered: int = 0,
        rate: float = 0.0,
    ) -> dict[str, Any]:
        """``mode`` ``single`` (one random device per push) or ``list`` (all ``devices`` per push).
        ``e2e_window``: at most this many pushes (of all pushers, ×``fanout``) accepted but not yet
        received; the harness zeroes the shared push counter and gives the fleets' count at start.
        ``rate`` > 0 offers pushes at that many a second (open loop) instead of as fast as
        answers come back."""
        accepted: list[tuple[str, int]] = []
        accept_lat = array("d")
        errors: Counter[str] = Counter()
        pushed = self.pushed
        t_start = time.monotonic()
        deadline = t_start + duration
        all_ids = [d for _, d in devices]
        body = "b" * body_size
        taken = itertools.count()

        def take() -> int | None:
            i = next(taken)
            if i >= count or time.monotonic() >= deadline:
                return None
            return i

        async def run() -> None:
            conn = SignedConnection(url, app_key, app_secret)
            try:
                while (i := take()) is not None:
                    if rate > 0:
                        due = t_start + i / rate
                        if due > time.monotonic():
                            await asyncio.sleep(due - time.monotonic())
                    while (  # noqa: ASYNC110 -- the counters are shared memory other processes write
                        e2e_window
                        and pushed.value * fanout - (delivered(self.counters) - base_delivered)
                        >= e2e_window * fanout
                        and time.monotonic() < deadline
                    ):
                        await asyncio.sleep(0.001)
                    seq = seq_start + i
                    if mode == "single":
                        gidx, dev = devices[pick(seq, len(devices))]
                        target: dict[str, Any] = {"devices": [dev]}
                    else:
                        gidx, target = -1, {"devices": all_ids}
                    request = {
                        "target": target,
                        "notification": {"title": "bench", "body": body},
                        "data": {"seq": seq, "t": time.monotonic()},
                    }
                    t0 = time.monotonic()
                    try:
                        result = await asyncio.wait_for(conn.request("POST", "/api/v1/push", request), 30)
                    except HttpError as exc:
                        errors[f"{exc.status} {exc.code}"] += 1
                        continue
                    except Exception as exc:
                        errors[_error_text(exc)] += 1
                        conn.close()
                        continue
                    accept_lat.append(time.monotonic() - t0)
                    with pushed.get_lock():
                        pushed.value += 1
                    accepted.append((str(result["msg_id"]), gidx))
            finally:
                conn.close()

        await asyncio.gather(*(run() for _ in range(inflight)))
        return {
            "accepted": accepted,
            "accept_lat": accept_lat.tobytes(),
            "errors": dict(errors),
            "t_start": t_start,
            "t_end": time.monotonic(),
        }


# --- process entry point -------------------------------------------------------------------------

ROLES: dict[str, Callable[[Any, Counters], Any]] = {
    "fleet": FleetWorker,
    "publisher": PublisherWorker,
    "pusher": PusherWorker,
}


def worker_main(role: str, pipe: Pipe, counter: Any, counters: Counters) -> None:
    """Entry point of a worker process: run commands from ``pipe`` until ``stop``."""
    die_with_parent()
    raise_nofile_limit()
    import uvloop

    uvloop.run(_serve(role, pipe, counter, counters))


async def _serve(role: str, pipe: Pipe, counter: Any, counters: Counters) -> None:
    impl = ROLES[role](counter, counters)
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    # A thread blocks on the pipe: the event loop's add_reader would make the fd non-blocking,
    # and Connection.recv/send of multiprocessing need it blocking.
    def read_commands() -> None:
        while True:
            try:
                msg = pipe.recv()
            except (EOFError, OSError):
                msg = ("stop", {})
            loop.call_soon_threadsafe(inbox.put_nowait, msg)
            if msg[0] == "stop":
                return

    threading.Thread(target=read_commands, name="commands", daemon=True).start()
    while True:
        cmd, args = await inbox.get()
        if cmd == "stop":
            with contextlib.suppress(OSError):
                pipe.send(("ok", None))
            return
        try:
            result = getattr(impl, "cmd_" + cmd)(**args)
            if asyncio.iscoroutine(result):
                result = await result
            reply: tuple[str, Any] = ("ok", result)
        except Exception as exc:
            reply = ("error", f"{_error_text(exc)}\n{traceback.format_exc(limit=4)}")
        try:
            pipe.send(reply)
        except OSError:
            return
