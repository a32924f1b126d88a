"""A throwaway PostgreSQL server for tests: Debian's ``postgresql`` binaries, a cluster in a temp
dir on a free loopback port, run as a non-root user when the tests run as root (PostgreSQL
refuses root). Each test gets its own schema in one database (``search_path`` in the URL), which
is much cheaper than a database per test."""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

PG_USER = "mqttpush-test"
_schemas = itertools.count(1)


def pg_bin() -> Path:
    root = Path("/usr/lib/postgresql")
    versions = sorted((p for p in root.glob("*/bin/initdb")), key=lambda p: int(p.parent.parent.name))
    if not versions:
        raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql")
    return versions[-1].parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user() -> list[str]:
    """The command prefix that runs PostgreSQL's programs as a user it accepts."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_USER,
            ],
            check=True,
            capture_output=True,
        )
    # setpriv execs the program itself (runuser would stay its parent): signals reach PostgreSQL.
    return ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups", "--"]


class PgServer:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = _free_port()
        self.prefix = _as_user()
        self.proc: subprocess.Popen[bytes] | None = None
        if self.prefix:
            shutil.chown(directory, PG_USER)
        bin_dir = pg_bin()
        self.postgres = str(bin_dir / "postgres")
        subprocess.run(
            [
                *self.prefix,
                str(bin_dir / "initdb"),
                "-D",
                str(directory / "data"),
                "-A",
                "trust",
                "-U",
                "mqttpush",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        self.start()
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE mqttpush")

    @property
    def admin_url(self) -> str:
        return f"postgresql://mqttpush@127.0.0.1:{self.port}/postgres"

    @property
    def url(self) -> str:
        return f"postgresql://mqttpush@127.0.0.1:{self.port}/mqttpush"

    def start(self, timeout: float = 30) -> None:
        args = [self.postgres, "-D", str(self.dir / "data"), "-p", str(self.port), "-h", "127.0.0.1"]
        args += [
            "-k",
            str(self.dir),
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ]
        log = (self.dir / "postgres.log").open("ab")
        self.proc = subprocess.Popen([*self.prefix, *args], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.admin_url, connect_timeout=1):
                    return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log_tail = (self.dir / "postgres.log").read_text()[-2000:]
                    raise RuntimeError(f"PostgreSQL did not start: {log_tail}") from None
                time.sleep(0.05)  # polling a server we just started, with a deadline

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: clients are disconnected
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def fresh_url(self) -> str:
        """A new, empty schema of its own: ``postgresql://…?options=-csearch_path=…``."""
        schema = f"t{os.getpid()}_{next(_schemas)}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        return f"{self.url}?options=-csearch_path%3D{schema}"


@contextlib.contextmanager
def pg_server() -> Iterator[PgServer]:
    with tempfile.TemporaryDirectory(prefix="mqttpush-pg-") as d:
        os.chmod(d, 0o755)
        server = PgServer(Path(d))
        try:
            yield server
        finally:
            server.stop()
