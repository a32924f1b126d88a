"""Online backup and restore of a data dir (docs/operations.md, "Backups and restore").

A backup is a new directory holding a consistent copy of ``mqttpush.db`` (SQLite's online
backup API: one read transaction, so a running server keeps accepting writes meanwhile), the
``master.key`` that opens its sealed secrets, and ``manifest.json`` with each file's size and
SHA-256. A restore checks those hashes, refuses a store a process still has open, and installs
both files with owner-only permissions.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mqttpush.errors import StoreError
from mqttpush.store.store import DB_FILE, KEY_FILE

MANIFEST_FILE = "manifest.json"
LOCK_PREFIX = ".lock"
FORMAT = 1
_FILES = (DB_FILE, KEY_FILE)
_COUNTED = ("apps", "devices", "messages")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (which must not exist) readable by the owner only, durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _copy_private(src: Path, dst: Path) -> str:
    """Copy ``src`` to the new file ``dst`` (owner-only, durably); returns the copy's SHA-256."""
    digest = hashlib.sha256()
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with src.open("rb") as f_in, os.fdopen(fd, "wb") as f_out:
        for block in iter(lambda: f_in.read(1 << 20), b""):
            digest.update(block)
            f_out.write(block)
        f_out.flush()
        os.fsync(f_out.fileno())
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_empty(path: Path) -> bool:
    """True if ``path`` holds nothing but data dir lock files."""
    return not any(not p.name.startswith(LOCK_PREFIX) for p in path.iterdir())


def backup(data_dir: Path, dest: Path, mqttpush_version: str, now: float) -> dict[str, Any]:
    """Copy the store in ``data_dir`` into the new directory ``dest`` and return its manifest.

    Works beside a running server: the copy is one read transaction of the database, so it holds
    everything committed before it began (every push already answered 202) and nothing half-done.
    """
    source = data_dir / DB_FILE
    if not source.is_file() or not (data_dir / KEY_FILE).is_file():
        raise StoreError(f"{data_dir} holds no mqttpush store ({DB_FILE}, {KEY_FILE})", code="no_store")
    if dest.exists() and (not dest.is_dir() or not _is_empty(dest)):
        raise StoreError(f"{dest} exists and is not an empty directory", code="backup_dest_not_empty")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dest, 0o700)

    copy = dest / DB_FILE
    _write_private(copy, b"")
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    dst = sqlite3.connect(copy, isolation_level=None)
    try:
        src.backup(dst)  # all pages in one step: one consistent snapshot, never restarted
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        schema = int(dst.execute("PRAGMA user_version").fetchone()[0])
        counts = {t: int(dst.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in _COUNTED}
    finally:
        dst.close()
        src.close()
    _copy_private(data_dir / KEY_FILE, dest / KEY_FILE)
    with (dest / DB_FILE).open("rb+") as f:
        os.fsync(f.fileno())

    manifest = {
        "format": FORMAT,
        "created_at": datetime.fromtimestamp(now, UTC).isoformat(),
        "schema_version": schema,
        "mqttpush_version": mqttpush_version,
        "files": {
            name: {"size": (dest / name).stat().st_size, "sha256": _sha256(dest / name)} for name in _FILES
        },
        "counts": counts,
    }
    _write_private(dest / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
    _fsync_dir(dest)
    return manifest


def verify(src: Path) -> dict[str, Any]:
    """The manifest of the backup in ``src`` once every file matches its size and SHA-256;
    raises :class:`StoreError` ``bad_backup`` otherwise."""
    try:
        manifest = json.loads((src / MANIFEST_FILE).read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError("unknown manifest format")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{src} has no readable {MANIFEST_FILE}: {exc}", code="bad_backup") from None
    for name in _FILES:
        entry = files.get(name)
        path = src / name
        if not isinstance(entry, dict) or not path.is_file():
            raise StoreError(f"{src} lacks {name}", code="bad_backup")
        if path.stat().st_size != entry.get("size") or _sha256(path) != entry.get("sha256"):
            raise StoreError(f"{path} does not match its manifest (size or SHA-256)", code="bad_backup")
    return dict(manifest)


@contextlib.contextmanager
def _exclusive(data_dir: Path) -> Iterator[None]:
    """Hold the data dir for the restore; raise ``store_in_use`` if a process has it.

    Two signs of a live process: a data dir lock file (``.lock-<role>``, mqttpush/store/lock.py)
    held by a running server, or the database open anywhere (every WAL connection keeps a shared
    lock that an exclusive-mode connection cannot get past). The lock files stay held until the
    restore ends, so a server starting meanwhile is refused.
    """
    held: list[int] = []
    try:
        for lock_path in sorted(data_dir.glob(f"{LOCK_PREFIX}*")):
            fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
            held.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(
                    f"{data_dir} is in use by a running server; stop it first", code="store_in_use"
                ) from None
        db = data_dir / DB_FILE
        if db.exists():
            probe = sqlite3.connect(db, isolation_level=None, timeout=0.1)
            try:
                probe.execute("PRAGMA locking_mode=EXCLUSIVE")
                probe.execute("BEGIN EXCLUSIVE")
                probe.execute("ROLLBACK")
            except sqlite3.OperationalError:
                raise StoreError(
                    f"{db} is open in another process (a running server?); stop it first",
                    code="store_in_use",
                ) from None
            finally:
                probe.close()
        yield
    finally:
        for fd in held:
            os.close(fd)


def restore(src: Path, data_dir: Path, force: bool = False) -> dict[str, Any]:
    """Install the backup in ``src`` as the store in ``data_dir``; returns its manifest.

    Refuses a tampered backup (``bad_backup``), a store open in another process
    (``store_in_use``) and, unless ``force``, a data dir that already holds files
    (``data_dir_not_empty``).
    """
    manifest = verify(src)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _exclusive(data_dir):
        if not force and not _is_empty(data_dir):
            raise StoreError(
                f"{data_dir} is not empty; restore into a new directory or pass --force",
                code="data_dir_not_empty",
            )
        # A -wal or -shm left by the old database would be replayed into the new one.
        for stale in (f"{DB_FILE}-wal", f"{DB_FILE}-shm", f"{DB_FILE}-journal"):
            (data_dir / stale).unlink(missing_ok=True)
        for name in _FILES:
            tmp = data_dir / f".{name}.restore"
            tmp.unlink(missing_ok=True)
            if _copy_private(src / name, tmp) != manifest["files"][name]["sha256"]:
                tmp.unlink()
                raise StoreError(f"{src / name} changed while it was restored", code="bad_backup")
            os.replace(tmp, data_dir / name)
        os.chmod(data_dir, 0o700)
        _fsync_dir(data_dir)
    return manifest
