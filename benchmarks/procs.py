"""The processes a run starts: ``mqttpush serve``, ``mosquitto``, the mqttpush admin CLI.

Every process started here is registered and killed on exit (``atexit``, SIGTERM/SIGINT and
the ``finally`` of each scenario); each one also gets ``PR_SET_PDEATHSIG`` so it dies with the
harness even if the harness is killed with SIGKILL.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_started: list[subprocess.Popen[bytes]] = []


class HarnessError(Exception):
    """Something in the harness itself failed (not a measurement)."""


def die_with_parent() -> None:
    """In a child process: get SIGKILL when the parent dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE to its hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _preexec() -> None:
    die_with_parent()
    raise_nofile_limit()


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(args, preexec_fn=_preexec, **kwargs)
    _started.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; only this process, by its pid."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    with contextlib.suppress(ValueError):
        _started.remove(proc)


def stop_all() -> None:
    for proc in list(_started):
        stop(proc, timeout=3.0)


def install_cleanup() -> None:
    """Kill what we started on normal exit and on SIGTERM/SIGINT/SIGHUP."""
    atexit.register(stop_all)

    def on_signal(signum: int, _frame: Any) -> None:
        stop_all()
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# --- /proc -------------------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    """VmRSS of a process in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise HarnessError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (seconds)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """Live processes whose parent is ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                out.append(int(entry))
    return out


def listen_overflows() -> int | None:
    """The kernel's TcpExt ListenOverflows counter (system-wide): SYNs dropped because a
    listener's accept queue was full; each costs the client a SYN retransmission (1 s, 3 s, 7 s…)."""
    try:
        lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()]
    except OSError:
        return None
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head and head[0] == "TcpExt:" and "ListenOverflows" in head:
            return int(values[head.index("ListenOverflows")])
    return None


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat: everything but idle and iowait)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields[:8]]
    busy = sum(values) - values[3] - values[4]
    return busy / os.sysconf("SC_CLK_TCK")


def mosquitto_version() -> str:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    try:
        out = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.splitlines()[0] if out else ""
    return first.replace("mosquitto version", "").strip() or "unknown"


# --- the mqttpush admin CLI ----------------------------------------------------------------------


def mqttpush_cli(*args: str, timeout: float = 600.0) -> Any:
    """Run ``python -m mqttpush ARGS --json`` and return its JSON document."""
    cmd = [sys.executable, "-m", "mqttpush", *args, "--json"]
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise HarnessError(f"{' '.join(args[:2])} timed out after {timeout}s") from None
    finally:
        stop(proc)
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise HarnessError(f"mqttpush {' '.join(args[:2])} failed ({proc.returncode}): {' | '.join(tail)}")
    return json.loads(out)


@dataclass
class Device:
    device_id: str
    token: str


@dataclass
class Fleet:
    """An app and its imported devices in one data dir."""

    data_dir: Path
    app_key: str
    app_secret: str
    devices: list[Device]
    service_user: str
    service_password: str
    import_seconds: float = 0.0


def make_fleet(data_dir: Path, count: int, tags: list[str] | None = None, timeout: float = 600.0) -> Fleet:
    """Create an app and import ``count`` devices into ``data_dir`` through the CLI."""
    data_dir.mkdir(parents=True, exist_ok=True)
    app = mqttpush_cli("app", "create", "bench", "--data-dir", str(data_dir))
    jsonl = data_dir / "devices.jsonl"
    with jsonl.open("w") as f:
        for i in range(count):
            row: dict[str, Any] = {"install_id": f"bench-{i}", "platform": "android"}
            if tags:
                row["tags"] = tags
            f.write(json.dumps(row) + "\n")
    t0 = time.monotonic()
    doc = mqttpush_cli(
        "device",
        "import",
        str(jsonl),
        "--data-dir",
        str(data_dir),
        "--app-key",
        app["app_key"],
        timeout=timeout,
    )
    took = time.monotonic() - t0
    devices = [Device(d["device_id"], d["device_token"]) for d in doc["devices"]]
    if len(devices) != count:
        raise HarnessError(f"device import returned {len(devices)} devices, expected {count}")
    creds = mqttpush_cli("service-credentials", "--data-dir", str(data_dir))
    return Fleet(
        data_dir, app["app_key"], app["app_secret"], devices, creds["username"], creds["password"], took
    )


# --- brokers -------------------------------------------------------------------------------------


@dataclass
class Broker:
    """A broker started for the run: ``kind`` is ``mqttpush`` or ``mosquitto``."""

    kind: str
    proc: subprocess.Popen[bytes]
    mqtt_port: int
    http_url: str | None = None
    workdir: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def cpu_seconds(self) -> float:
        """The whole server: ``serve`` and its broker process (mqttpush.server.DualProcessServer)."""
        return sum(self.cpu_parts().values())

    def cpu_parts(self) -> dict[str, float]:
        """CPU seconds per process of the server: ``main``, and ``child`` for the broker process
        ``serve`` runs on a machine with more than one core."""
        parts = {"main": cpu_seconds(self.pid)}
        for pid in child_pids(self.pid):
            with contextlib.suppress(OSError):  # it ended meanwhile
                parts["child"] = parts.get("child", 0.0) + cpu_seconds(pid)
        return parts

    def stderr_tail(self) -> str:
        if self.workdir is None:
            return ""
        path = self.workdir / "stderr.log"
        try:
            lines = path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-5:])

    def stop(self) -> None:
        stop(self.proc)

    def log_problems(self, keep: int = 5) -> dict[str, Any]:
        """Warning/error lines of the broker's stderr: how many, and the first few distinct ones
        (timestamps cut off)."""
        if self.workdir is None:
            return {}
        try:
            lines = (self.workdir / "stderr.log").read_text(errors="replace").splitlines()
        except OSError:
            return {}
        marks = ("WARNING", "ERROR", "CRITICAL", "Traceback", "Warning:", "Error:")
        hits = [
            line
            for line in lines
            if any(m in line for m in marks) and "should not be run as root" not in line
        ]
        if not hits:
            return {}
        distinct: list[str] = []
        for line in hits:
            first = line.split(" ", 1)[0]
            if first.endswith(":") and first[:-1].isdigit():  # mosquitto: "1795622352: Warning: …"
                text = line.split(" ", 1)[-1]
            elif first[:4].isdigit():  # logging: "2026-11-25 16:00:00,123 WARNING name: …"
                text = line.split(" ", 2)[-1]
            else:
                text = line
            text = text[:300]
            if text not in distinct:
                distinct.append(text)
            if len(distinct) >= keep:
                break
        return {"count": len(hits), "first": distinct}


def start_mqttpush(data_dir: Path, timeout: float = 60.0) -> Broker:
    """``python -m mqttpush serve --data-dir D --mqtt-port 0 --http-port 0 --json --log-level warning``."""
    workdir = Path(tempfile.mkdtemp(prefix="serve-", dir=data_dir.parent))
    stderr = (workdir / "stderr.log").open("wb")
    cmd = [
        sys.executable,
        "-m",
        "mqttpush",
        "serve",
        "--data-dir",
        str(data_dir),
        "--host",
        HOST,
        "--mqtt-port",
        "0",
        "--http-port",
        "0",
        "--json",
        "--log-level",
        "warning",
    ]
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=stderr)
    stderr.close()
    broker = Broker("mqttpush", proc, 0, workdir=workdir)
    assert proc.stdout is not None
    line = _read_line(proc, timeout)
    if not line:
        broker.stop()
        raise HarnessError(f"mqttpush serve did not start: {broker.stderr_tail() or 'no ready line'}")
    try:
        ready = json.loads(line)
    except ValueError:
        broker.stop()
        raise HarnessError(f"mqttpush serve printed {line[:200]!r} instead of a ready line") from None
    broker.mqtt_port = int(ready["mqtt_port"])
    broker.http_url = str(ready["http_url"])
    broker.info = ready
    return broker


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or (proc.poll() is not None and not select.select([fd], [], [], 0)[0]):
            return ""
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                return ""
            buf += chunk
    return buf.split(b"\n", 1)[0].decode(errors="replace")


MOSQUITTO_CONF = """\
# written by benchmarks/procs.py for one benchmark run
listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_connections -1
max_queued_messages 1000000
max_inflight_messages 20
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
{user}
"""


def start_mosquitto(workroot: Path, timeout: float = 10.0) -> Broker:
    """``mosquitto -c CONF`` on a free loopback port (anonymous, no persistence)."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    last = ""
    for _attempt in range(5):
        workdir = Path(tempfile.mkdtemp(prefix="mosquitto-", dir=workroot))
        port = free_port()
        # As root mosquitto would switch to its own user, which clears our PDEATHSIG.
        user = "user root" if os.geteuid() == 0 else ""
        conf = workdir / "mosquitto.conf"
        conf.write_text(MOSQUITTO_CONF.format(port=port, user=user))
        stderr = (workdir / "stderr.log").open("wb")
        proc = spawn([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=stderr)
        stderr.close()
        broker = Broker("mosquitto", proc, port, workdir=workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and broker.alive():
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
                broker.info = {"version": mosquitto_version(), "config": str(conf)}
                return broker
            time.sleep(0.05)
        last = broker.stderr_tail()
        broker.stop()
    raise HarnessError(f"mosquitto did not start: {last}")
