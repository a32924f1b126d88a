"""Read-only looks at a data dir for ``mqttpush doctor`` (docs/operations.md, "mqttpush doctor"):
the store's schema version and who holds the data dir's locks. Nothing here creates, migrates or
tightens anything, unlike opening a :class:`~mqttpush.store.Store`."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from mqttpush.store.lock import ROLES
from mqttpush.store.store import DB_FILE, _migrations


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    found: int
    """The store's schema version (0: an empty or foreign database)."""
    latest: int
    """The newest schema this mqttpush knows."""
    tables: int
    """Tables in the database (a version 0 with tables is another program's database)."""


def schema_status(data_dir: Path) -> SchemaStatus:
    """Read the store's schema version without writing (``mode=ro``). Raises ``sqlite3.Error``
    for a file SQLite cannot read (damaged, not a database) and ``OSError`` for a missing one."""
    path = data_dir / DB_FILE
    if not path.is_file():
        raise FileNotFoundError(path)
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = int(conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0])
    finally:
        conn.close()
    return SchemaStatus(version, _migrations()[-1][0], tables)


@dataclass(frozen=True, slots=True)
class LockStatus:
    role: str
    exists: bool
    held: bool
    pid: str
    """What the lock file says (its holder's, or its last holder's, pid), "" if nothing."""


def _flocked() -> set[tuple[int, int, int]] | None:
    """(major, minor, inode) of every file with an ``flock`` on it, from /proc/locks (Linux); None
    where that cannot be read."""
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    out = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK":
            with contextlib.suppress(ValueError):
                major, minor, inode = parts[5].split(":")
                out.add((int(major, 16), int(minor, 16), int(inode)))
    return out


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def lock_status(data_dir: Path) -> list[LockStatus]:
    """For each role's lock file (``.lock-broker``, ``.lock-bridge``): is a process holding it now?
    Only looked at, never taken, so a server starting meanwhile is not refused: the kernel's list
    of flocks says, or (without /proc) whether the pid in the file is alive."""
    flocked = _flocked()
    out = []
    for role in ROLES:
        path = data_dir / f".lock-{role}"
        try:
            pid = path.read_text().strip()
            st = path.stat()
        except FileNotFoundError:
            out.append(LockStatus(role, False, False, ""))
            continue
        if flocked is not None:
            held = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in flocked
        else:
            held = bool(pid) and _alive(pid)
        out.append(LockStatus(role, True, held, pid))
    return out
