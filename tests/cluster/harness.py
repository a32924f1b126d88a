"""A whole mqttpush cluster on loopback, for the cluster tests and ``scripts/cluster``
(docs/scale-out.md): PostgreSQL, a 3-node NATS cluster, broker nodes and bridges as
subprocesses, and HAProxy in front of each tier, every one in one temp dir on free ports.

Every process is started here and nowhere else (:class:`Specs` holds the command lines), each
can be killed (``kill -9``) and started again on the same port, and :meth:`Cluster.stop` ends
them all. What the machine lacks (PostgreSQL, nats-server, HAProxy) is reported as
:class:`MissingPiece`, naming it.

``python -m tests.cluster.harness [--json]`` runs a cluster until SIGINT/SIGTERM (what
``scripts/cluster`` does); with ``--json`` its first stdout line is the ``ready`` document.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.pg import PgServer

START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
NODES = 3
BRIDGES = 2


class MissingPiece(RuntimeError):
    """A part of the cluster that this machine or this build of mqttpush does not have yet."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, deadline: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until something accepts TCP connections on 127.0.0.1:port (or ``proc`` ends, or the deadline)."""
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process {proc.args!r} ended with {proc.returncode} before listening on {port}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")
        time.sleep(0.02)  # polling a process we just started, with a deadline


# --- what must be there ---------------------------------------------------------------------------


def require_binaries() -> None:
    """The apt packages (``scripts/test`` and ``scripts/cluster`` install them when missing)."""
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        raise MissingPiece("PostgreSQL is not installed: apt-get install -y postgresql")
    for binary, package in (("nats-server", "nats-server"), ("haproxy", "haproxy")):
        if shutil.which(binary, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            raise MissingPiece(f"{binary} is not installed: apt-get install -y {package}")


def which(binary: str) -> str:
    found = shutil.which(binary, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found is None:
        raise MissingPiece(f"{binary} is not installed")
    return found


# --- processes ------------------------------------------------------------------------------------


@dataclass
class Proc:
    """One subprocess of the cluster: its own process group, its output in a log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    """The ``{"event": "ready", …}`` line of an mqttpush process."""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, json_ready: bool = False, deadline: float | None = None, wait: bool = True) -> None:
        """Start it; with ``json_ready``, read its ready line (now, or in :meth:`wait_ready` if not
        ``wait``)."""
        if self.proc is not None and self.proc.stdout is not None:  # started before: a restart
            self.proc.stdout.close()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE if json_ready else log,
            stderr=log,
            env=self.env,
            start_new_session=True,  # a signal to the test runner's group does not reach it
        )
        log.close()
        self.ready = {}
        if json_ready and wait:
            self.wait_ready(deadline)

    def wait_ready(self, deadline: float | None = None) -> None:
        self.ready = self._read_ready(deadline or time.monotonic() + START_TIMEOUT)

    def _read_ready(self, deadline: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        out: IO[bytes] = self.proc.stdout
        os.set_blocking(out.fileno(), False)
        buf = b""
        while b"\n" not in buf:
            chunk = out.read()
            if chunk:
                buf += chunk
            elif self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} ended with {self.proc.returncode} before ready: {tail}")
            elif time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready within {START_TIMEOUT} s")
            else:
                time.sleep(0.02)  # polling a process we just started, with a deadline
        doc: dict[str, Any] = json.loads(buf.split(b"\n", 1)[0])
        if doc.get("event") != "ready":
            raise RuntimeError(f"{self.name}: first line is not the ready document: {doc!r}")
        return doc

    def kill9(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Nats:
    """``nats-server`` ×N as one cluster: each routes to all the others (core pub/sub, no JetStream)."""

    def __init__(self, root: Path, n: int = NODES) -> None:
        self.ports = [free_port() for _ in range(n)]
        self.route_ports = [free_port() for _ in range(n)]
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.route_ports)
        self.nodes = [
            Proc(
                f"nats-{i + 1}",
                [
                    which("nats-server"),
                    "-a",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-n",
                    f"nats-{i + 1}",
                    "--cluster_name",
                    "mqttpush",
                    "--cluster",
                    f"nats://127.0.0.1:{self.route_ports[i]}",
                    "--routes",
                    routes,
                ],
                root / f"nats-{i + 1}.log",
            )
            for i, port in enumerate(self.ports)
        ]

    @property
    def url(self) -> str:
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.ports)

    def start(self, deadline: float) -> None:
        for node in self.nodes:
            node.start()
        for node, port in zip(self.nodes, self.ports, strict=True):
            wait_port(port, deadline, node.proc)

    def restart(self, i: int, deadline: float) -> None:
        self.nodes[i].start()
        wait_port(self.ports[i], deadline, self.nodes[i].proc)


class Postgres:
    """PostgreSQL from Debian's packages (tests/pg.py runs it as a user it accepts), one database."""

    def __init__(self, root: Path) -> None:
        directory = root / "postgres"
        directory.mkdir(mode=0o755)
        self.server = PgServer(directory)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def pid(self) -> int:
        assert self.server.proc is not None
        return self.server.proc.pid

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


def haproxy_config(
    mqtt_port: int, http_port: int, brokers: list[int], bridges: list[int], stats_socket: Path | None = None
) -> str:
    """TCP in front of the broker nodes (MQTT), HTTP in front of the bridges; health checks every
    200 ms take a dead node out after one failed check, and put it back after two good ones.
    ``stats_socket``: where HAProxy answers ``show stat`` (which backends it sees up)."""
    lines = [
        "global",
        "    maxconn 8000",  # 2 descriptors a connection; raise with ulimit -n for more
        *([f"    stats socket {stats_socket} mode 600"] if stats_socket is not None else []),
        "defaults",
        "    timeout connect 2s",
        "    timeout client 1h",
        "    timeout server 1h",
        "    timeout http-request 10s",
        "frontend mqtt",
        f"    bind 127.0.0.1:{mqtt_port}",
        "    mode tcp",
        "    default_backend brokers",
        "backend brokers",
        "    mode tcp",
        "    balance leastconn",
        "    option tcp-check",
        "    option redispatch",  # a connection refused by a node not yet seen dead goes to another
        "    retries 2",
        *(
            f"    server broker-{i + 1} 127.0.0.1:{p} check inter 200ms fall 1 rise 2"
            for i, p in enumerate(brokers)
        ),
    ]
    if bridges:
        lines += [
            "frontend http",
            f"    bind 127.0.0.1:{http_port}",
            "    mode http",
            "    default_backend bridges",
            "backend bridges",
            "    mode http",
            "    balance roundrobin",
            "    option httpchk GET /healthz",
            # Only a connection never made is tried on another bridge: a request a bridge died on
            # may have been applied (its nonce is spent), so the client hears 502 and retries itself.
            "    retry-on conn-failure",
            "    retries 3",
            "    option redispatch",
            *(
                f"    server bridge-{i + 1} 127.0.0.1:{p} check inter 200ms fall 1 rise 2"
                for i, p in enumerate(bridges)
            ),
        ]
    return "\n".join(lines) + "\n"


class Specs:
    """The command line of every mqttpush process of the cluster, in one place."""

    def __init__(self, root: Path, store: str, nats_url: str, lease_seconds: float) -> None:
        self.root = root
        self.store = store
        self.nats_url = nats_url
        self.lease_seconds = lease_seconds

    def mqttpush(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "mqttpush", *args]

    def broker_dir(self, node_id: str) -> Path:
        return self.root / f"broker-{node_id}"

    def bridge_dir(self, n: int) -> Path:
        return self.root / f"bridge-{n}"

    def broker(self, node_id: str, port: int) -> list[str]:
        return self.mqttpush(
            "broker", "--data-dir", str(self.broker_dir(node_id)),
            "--host", "127.0.0.1", "--mqtt-port", str(port),
            "--store", self.store, "--cluster", self.nats_url, "--node-id", node_id,
            "--log-level", "warning", "--json",
        )  # fmt: skip

    def bridge(self, n: int, port: int) -> list[str]:
        return self.mqttpush(
            "bridge", "--data-dir", str(self.bridge_dir(n)),
            "--host", "127.0.0.1", "--http-port", str(port),
            "--store", self.store, "--cluster", self.nats_url, "--lease-seconds", str(self.lease_seconds),
            "--log-level", "warning", "--json",
        )  # fmt: skip

    @property
    def admin_dir(self) -> Path:
        """The data dir of the local admin commands: its ``master.key`` is every process's."""
        return self.root / "admin"

    def admin(self, *args: str) -> list[str]:
        """A local admin command over the cluster's store (``app create``, ``device import``, …)."""
        return self.mqttpush(*args, "--data-dir", str(self.admin_dir), "--store", self.store, "--json")

    def app_create(self, name: str) -> list[str]:
        return self.admin("app", "create", name)

    def seed(self, data_dir: Path) -> None:
        """Give a process's data dir the admin's ``master.key`` (docs/scale-out.md: every process
        of a cluster needs the same one, which seals the secrets in the shared store)."""
        data_dir.mkdir(mode=0o700, exist_ok=True)
        key = data_dir / "master.key"
        if not key.exists():
            shutil.copyfile(self.admin_dir / "master.key", key)
            key.chmod(0o600)


class Cluster:
    """``with Cluster() as c:`` a running cluster; ``c.ready`` is the document scripts/cluster prints."""

    def __init__(
        self,
        root: Path | None = None,
        *,
        brokers: int = NODES,
        bridges: int = BRIDGES,
        lease_seconds: float = 3.0,
    ) -> None:
        require_binaries()
        self._tmp = None if root is not None else tempfile.TemporaryDirectory(prefix="mqttpush-cluster-")
        self.root = root if root is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        os.chmod(self.root, 0o755)  # PostgreSQL runs as its own user below it
        self.n_brokers, self.n_bridges, self.lease_seconds = brokers, bridges, lease_seconds
        self.postgres: Postgres | None = None
        self.nats: Nats | None = None
        self.brokers: list[Proc] = []
        self.bridges: list[Proc] = []
        self.haproxy: Proc | None = None
        self.mqtt_port = free_port()
        self.http_port = free_port()
        self.specs: Specs | None = None

    # lifecycle

    def start(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        try:
            self.postgres = Postgres(self.root)
            self.nats = Nats(self.root)
            self.nats.start(deadline)
            self.specs = Specs(self.root, self.postgres.url, self.nats.url, self.lease_seconds)
            # The admin's data dir first: it migrates the database and makes the master key that
            # every process gets a copy of (one machine each, as docs/scale-out.md has it).
            subprocess.run(
                self.specs.admin("service-credentials"),
                capture_output=True,
                check=True,
                timeout=START_TIMEOUT,
            )
            for i in range(self.n_brokers):
                node_id = f"node-{i + 1}"
                self.specs.seed(self.specs.broker_dir(node_id))
                self.brokers.append(
                    Proc(
                        f"broker-{i + 1}",
                        self.specs.broker(node_id, free_port()),
                        self.root / f"broker-{i + 1}.log",
                    )
                )
            for i in range(self.n_bridges):
                self.specs.seed(self.specs.bridge_dir(i + 1))
                self.bridges.append(
                    Proc(
                        f"bridge-{i + 1}",
                        self.specs.bridge(i + 1, free_port()),
                        self.root / f"bridge-{i + 1}.log",
                    )
                )
            for proc in [*self.brokers, *self.bridges]:  # all at once: most of a start is imports
                proc.start(json_ready=True, wait=False)
            for proc in [*self.brokers, *self.bridges]:
                proc.wait_ready(deadline)
            cfg = self.root / "haproxy.cfg"
            cfg.write_text(
                haproxy_config(
                    self.mqtt_port,
                    self.http_port,
                    [int(b.ready["mqtt_port"]) for b in self.brokers],
                    [int(b.ready["http_port"]) for b in self.bridges],
                    self.root / "haproxy.sock",
                )
            )
            self.haproxy = Proc(
                "haproxy", [which("haproxy"), "-f", str(cfg), "-db"], self.root / "haproxy.log"
            )
            self.haproxy.start()
            wait_port(self.mqtt_port, deadline, self.haproxy.proc)
            wait_port(self.http_port, deadline, self.haproxy.proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop everything this cluster started, front to back; kill what does not stop in time."""
        if self.haproxy is not None:
            self.haproxy.stop()
        for proc in [*self.bridges, *self.brokers]:
            proc.stop()
        if self.nats is not None:
            for node in self.nats.nodes:
                node.stop()
        if self.postgres is not None:
            self.postgres.stop()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # what it offers

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def pids(self) -> list[int]:
        """Every process this cluster started that should be running."""
        procs = [*self.brokers, *self.bridges, *(self.nats.nodes if self.nats else []), self.haproxy]
        out = [p.pid for p in procs if p is not None and p.alive]
        if self.postgres is not None and self.postgres.server.proc is not None:
            out.append(self.postgres.pid)
        return out

    @property
    def ready(self) -> dict[str, Any]:
        assert self.postgres is not None and self.nats is not None and self.haproxy is not None
        return {
            "event": "ready",
            "mqtt_url": self.mqtt_url,
            "http_url": self.http_url,
            "store": self.postgres.url,
            "brokers": [
                {"node_id": f"node-{i + 1}", "pid": b.pid, "mqtt_port": int(b.ready["mqtt_port"])}
                for i, b in enumerate(self.brokers)
            ],
            "bridges": [{"pid": b.pid, "http_port": int(b.ready["http_port"])} for b in self.bridges],
            "nats": [
                {"pid": n.pid, "port": p} for n, p in zip(self.nats.nodes, self.nats.ports, strict=True)
            ],
            "postgres": {"pid": self.postgres.pid, "port": self.postgres.port},
            "haproxy": {"pid": self.haproxy.pid},
            "dir": str(self.root),
            "data_dir": str(self.root / "admin"),  # for local admin commands with --store
        }

    def admin(self, *args: str, timeout: float = 300) -> Any:
        """Run a local admin command over the cluster's store; its JSON document."""
        assert self.specs is not None
        out = subprocess.run(self.specs.admin(*args), capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"mqttpush {' '.join(args[:2])} failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout)

    def create_app(self, name: str = "cluster") -> dict[str, str]:
        doc: dict[str, str] = self.admin("app", "create", name)
        return doc

    def import_devices(self, app_key: str, rows: list[dict[str, Any]]) -> list[dict[str, str]]:
        """``mqttpush device import --store …``: [{"install_id", "device_id", "device_token"}]."""
        path = self.root / f"import-{app_key}-{len(rows)}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        devices: list[dict[str, str]] = self.admin("device", "import", str(path), "--app-key", app_key)[
            "devices"
        ]
        path.unlink()
        return devices

    # faults and repair

    def backends_up(self) -> dict[str, bool]:
        """Each broker and bridge as HAProxy sees it now (from its stats socket): name → up."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.root / "haproxy.sock"))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        out = {}
        for line in data.decode().splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[1].startswith(("broker-", "bridge-")):
                out[fields[1]] = fields[17] == "UP"
        return out

    def heal(self, timeout: float = START_TIMEOUT) -> None:
        """Start again whatever was killed or stopped (same ports), then wait until HAProxy sees
        every broker and bridge up."""
        assert self.nats is not None and self.postgres is not None
        deadline = time.monotonic() + timeout
        if self.postgres.server.proc is None or self.postgres.server.proc.poll() is not None:
            self.postgres.start()
        for i, node in enumerate(self.nats.nodes):
            if not node.alive:
                self.nats.restart(i, deadline)
        dead = [p for p in [*self.brokers, *self.bridges] if not p.alive]
        for proc in dead:
            proc.start(json_ready=True, wait=False)
        for proc in dead:
            proc.wait_ready(deadline)
        while not all(self.backends_up().values()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"HAProxy does not see every backend up: {self.backends_up()}")
            time.sleep(0.05)  # polling HAProxy's view (checks every 200 ms), with a deadline


@contextlib.contextmanager
def running(**kw: Any) -> Iterator[Cluster]:
    with Cluster(**kw) as cluster:
        yield cluster


def main(argv: list[str]) -> int:
    as_json = "--json" in argv
    unknown = [a for a in argv if a != "--json"]
    if unknown:
        print(f"error: no such option: {unknown[0]} (usage: scripts/cluster [--json])", file=sys.stderr)
        return 2
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        cluster = Cluster()
    except MissingPiece as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        cluster.start()
        if as_json:
            print(json.dumps(cluster.ready), flush=True)
        else:
            print(f"mqttpush cluster: MQTT {cluster.mqtt_url}, HTTP {cluster.http_url}", flush=True)
            print(f"store {cluster.ready['store']}; files in {cluster.root}; Ctrl-C stops", flush=True)
        # Block the two signals, then wait for one: none can slip in between a check and a wait.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        if not stop:
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except Exception as exc:
        print(f"error: cluster did not start: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
