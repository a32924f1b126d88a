"""The data dir's lock: one server per role per data dir (docs/operations.md).

``serve`` takes the ``broker`` and ``bridge`` locks, ``mqttpush broker`` the first and
``mqttpush bridge`` the second, so split mode's pair shares a data dir by design while a second
``serve`` (or a second broker, or bridge) on it is refused. In a cluster (``--cluster``) several
brokers and bridges share the store: each takes its role's lock *shared* (a ``serve`` or a
single broker or bridge is still refused beside them, and they beside it), and a broker node also
``broker-<node id>`` exclusively, so two nodes with one id are refused. Local admin commands take none: they
work beside a running server. Each lock is an ``flock`` on ``DATA_DIR/.lock-<role>``, held until
the process ends (the kernel drops it even after a crash), the file holding the holder's pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

from mqttpush.errors import StoreError

ROLES = ("broker", "bridge")


def prepare_data_dir(data_dir: Path) -> None:
    """Create ``data_dir`` (0700) if needed and tighten it to 0700 if it is ours and looser."""
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = data_dir.stat()
        if st.st_uid == os.geteuid() and st.st_mode & 0o077:
            data_dir.chmod(0o700)
    except OSError as exc:
        raise unwritable(data_dir, exc) from exc


def unwritable(data_dir: Path, exc: OSError) -> StoreError:
    return StoreError(
        f"cannot write in data dir {data_dir}: {exc.strerror or exc}", code="data_dir_unwritable"
    )


class DataDirLock:
    """``DataDirLock(data_dir, roles)`` takes the roles' locks at once or raises
    :class:`StoreError` ``data_dir_locked`` (``data_dir_unwritable`` if it cannot make the file)."""

    def __init__(
        self, data_dir: str | os.PathLike[str], roles: tuple[str, ...], shared: tuple[str, ...] = ()
    ) -> None:
        """``shared`` roles are taken as shared locks: any number of cluster processes hold them
        together, and none while someone holds the role exclusively."""
        self.data_dir = Path(data_dir)
        prepare_data_dir(self.data_dir)
        self._files: list[IO[str]] = []
        try:
            for role in shared:
                self._files.append(self._take(self.data_dir / f".lock-{role}", fcntl.LOCK_SH))
            for role in roles:
                self._files.append(self._take(self.data_dir / f".lock-{role}"))
        except BaseException:
            self.release()
            raise

    def _take(self, path: Path, mode: int = fcntl.LOCK_EX) -> IO[str]:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise unwritable(self.data_dir, exc) from exc
        f = os.fdopen(fd, "r+")
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = f.read().strip() or "?"
            f.close()
            raise StoreError(
                f"data dir {self.data_dir} is in use by pid {holder}", code="data_dir_locked"
            ) from None
        except BaseException:
            f.close()
            raise
        if mode == fcntl.LOCK_EX:
            f.truncate(0)
            f.write(f"{os.getpid()}\n")
        else:  # one of many holders: its pid is one to name
            f.seek(0)
            f.write(f"{os.getpid()} (cluster)\n")
            f.truncate()
        f.flush()
        return f

    def release(self) -> None:
        """Drop the locks (ending the process does too)."""
        for f in self._files:
            with contextlib.suppress(OSError):
                f.close()
        self._files.clear()
