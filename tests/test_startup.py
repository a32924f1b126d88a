"""Start-up and the data dir (issue 18 item 3): ``mqttpush serve`` as an operator runs it refuses a
data dir it cannot use at once, with ``error: … [code]`` and exit status 2 (no traceback, no long
wait), honours SIGTERM while it opens the store, and keeps one server per role per data dir."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqttpush.store import Store
from mqttpush.store.store import DB_FILE, KEY_FILE
from tests.conftest import ServeProcess
from tests.store.test_migrations import highest_migration

# Python's own start is most of it; before the fix a read-only dir took ~25 s.
PROMPT = 6.0


def _serve(data_dir: Path, command: str = "serve") -> list[str]:
    return [sys.executable, "-m", "mqttpush", command, "--data-dir", str(data_dir), "--mqtt-port", "0"] + (
        ["--http-port", "0"] if command == "serve" else []
    )


def refusal(data_dir: Path, command: str = "serve") -> str:
    """Run a server that must refuse to start: its ``error: … [code]`` line; checks exit 2, no traceback."""
    started = time.monotonic()
    proc = subprocess.run(_serve(data_dir, command), capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""
    assert took < PROMPT, f"took {took:.1f} s"
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    return line


def code_of(line: str) -> str:
    return line.rsplit("[", 1)[1].rstrip("]")


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A data dir with a store that holds sealed secrets (an app)."""
    data_dir = tmp_path / "data"
    store = Store(data_dir)
    store.apps.create_app("shop")
    store.close()
    return data_dir


@pytest.fixture
def read_only(store_dir: Path) -> Iterator[Path]:
    """``store_dir`` made read-only for real: a read-only bind mount as root (who ignores
    permission bits), the permission bits otherwise."""
    if os.geteuid() == 0:
        subprocess.run(["mount", "--bind", str(store_dir), str(store_dir)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(store_dir)], check=True)
            yield store_dir
        finally:
            subprocess.run(["umount", str(store_dir)], check=True)
    else:
        store_dir.chmod(0o500)
        try:
            yield store_dir
        finally:
            store_dir.chmod(0o700)


def test_read_only_data_dir_is_refused_at_once(read_only: Path) -> None:
    with pytest.raises(OSError):
        (read_only / "probe").write_bytes(b"")  # really read-only, even for root
    assert code_of(refusal(read_only)) == "data_dir_unwritable"


def test_garbage_database_is_refused(tmp_path: Path) -> None:
    tmp_path.joinpath(DB_FILE).write_bytes(b"this is no database, just some bytes\n" * 200)
    assert code_of(refusal(tmp_path)) == "store_corrupt"


def test_truncated_database_is_refused(store_dir: Path) -> None:
    db = store_dir / DB_FILE
    size = db.stat().st_size
    assert size > 3 * 4096
    os.truncate(db, 3 * 4096)
    assert code_of(refusal(store_dir)) == "store_corrupt"


def test_database_cut_inside_its_header_is_refused(store_dir: Path) -> None:
    os.truncate(store_dir / DB_FILE, 50)
    assert code_of(refusal(store_dir)) == "store_corrupt"


def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / DB_FILE)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('mine')")
    conn.commit()
    conn.close()
    line = refusal(tmp_path)
    assert code_of(line) == "store_foreign"
    conn = sqlite3.connect(tmp_path / DB_FILE)
    try:  # left as it was: no table of ours added
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == [
            "notes"
        ]
    finally:
        conn.close()


def test_newer_schema_is_refused(store_dir: Path) -> None:
    conn = sqlite3.connect(store_dir / DB_FILE)
    conn.execute(f"PRAGMA user_version = {highest_migration() + 1}")
    conn.commit()
    conn.close()
    assert code_of(refusal(store_dir)) == "schema_too_new"


def test_empty_database_file_becomes_a_new_store(tmp_path: Path) -> None:
    (tmp_path / DB_FILE).write_bytes(b"")
    server = ServeProcess(tmp_path)
    assert server.stop(signal.SIGTERM) == 0
    assert (tmp_path / KEY_FILE).stat().st_size == 32


def test_missing_master_key_is_refused_when_secrets_are_sealed(store_dir: Path) -> None:
    (store_dir / KEY_FILE).unlink()
    line = refusal(store_dir)
    assert code_of(line) == "master_key_missing"
    assert KEY_FILE in line
    assert not (store_dir / KEY_FILE).exists()  # no new key that would open nothing


def test_wrong_master_key_is_refused(store_dir: Path) -> None:
    (store_dir / KEY_FILE).write_bytes(os.urandom(32))
    assert code_of(refusal(store_dir)) == "master_key_wrong"


def test_short_master_key_is_refused(store_dir: Path) -> None:
    (store_dir / KEY_FILE).write_bytes(os.urandom(10))
    assert code_of(refusal(store_dir)) == "master_key_invalid"


def test_missing_master_key_of_a_store_without_secrets_is_made(tmp_path: Path) -> None:
    Store(tmp_path).close()
    (tmp_path / KEY_FILE).unlink()
    server = ServeProcess(tmp_path)
    assert server.stop(signal.SIGTERM) == 0
    assert (tmp_path / KEY_FILE).stat().st_size == 32


def test_sigterm_while_the_store_waits_for_a_lock_ends_the_process(store_dir: Path) -> None:
    holder = sqlite3.connect(store_dir / DB_FILE, isolation_level=None)
    holder.execute(f"PRAGMA user_version = {highest_migration() - 1}")  # a migration to apply
    holder.execute("BEGIN IMMEDIATE")  # which waits for this writer (the busy timeout: 10 s)
    try:
        args = [*_serve(store_dir), "--log-level", "debug"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        for line in proc.stderr:
            if "opening the store" in line:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(PROMPT) == 0  # before: deaf to it until the 10 s busy timeout
        assert proc.stdout is not None and proc.stdout.read() == ""
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_second_server_on_a_data_dir_is_refused_and_admin_commands_still_work(tmp_path: Path) -> None:
    first = ServeProcess(tmp_path)
    try:
        line = refusal(tmp_path)
        assert code_of(line) == "data_dir_locked"
        assert f"data dir {tmp_path} is in use by pid {first.proc.pid}" in line
        assert code_of(refusal(tmp_path, "broker")) == "data_dir_locked"
        made = subprocess.run(
            [
                sys.executable,
                "-m",
                "mqttpush",
                "app",
                "create",
                "shop",
                "--data-dir",
                str(tmp_path),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
    finally:
        assert first.stop(signal.SIGTERM) == 0
    ServeProcess(tmp_path).stop(signal.SIGTERM)  # the lock went with the process


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_dir_and_files_are_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = ServeProcess(data_dir)
    try:
        assert _mode(data_dir) == 0o700
        for name in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm", KEY_FILE):
            assert _mode(data_dir / name) == 0o600, name
    finally:
        server.stop(signal.SIGTERM)


def test_loose_modes_are_tightened_on_open(store_dir: Path) -> None:
    store_dir.chmod(0o755)
    for name in (DB_FILE, KEY_FILE):
        (store_dir / name).chmod(0o644)
    Store(store_dir).close()
    assert _mode(store_dir) == 0o700
    assert _mode(store_dir / DB_FILE) == _mode(store_dir / KEY_FILE) == 0o600
