"""Uploaded id files (``POST /api/v1/files``) and the tasks of group sends: their audience's
deliveries added batch by batch, their end, their cancellation and their progress."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mqttpush import ids
from mqttpush.errors import Conflict, NotFound
from mqttpush.models import DeliveryState
from mqttpush.store.core import Repository


@dataclass(frozen=True, slots=True)
class TaskRecord:
    task_id: str
    app_key: str
    msg_id: str
    kind: str
    state: str
    target: dict[str, Any]
    policy: dict[str, Any]
    payload: bytes
    fanout: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class FileInfo:
    """An uploaded id file, once complete."""

    file_id: str
    kind: str
    """``devices`` or ``aliases``."""
    alias_type: str | None
    lines: int
    created_at: float


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A task's progress: its deliveries counted by how far they got."""

    task_id: str
    msg_id: str
    kind: str
    state: str
    targeted: int
    published: int
    forwarded: int
    arrived: int
    opened: int
    failed: int
    expired: int
    cancelled: int
    error: str | None
    created_at: float
    finished_at: float | None


_TASK_COUNTS = "SELECT state, count(*) FROM deliveries WHERE msg_id = ? GROUP BY state"
"""A count per state, read from the (msg_id, state) index alone: 7x cheaper on 100,000 deliveries
than eight conditional sums over every row (~7 against ~55 ms), and a running task is polled."""


def _count(by_state: dict[str, int], *states: str) -> int:
    return sum(by_state.get(state, 0) for state in states)


class TaskRepository(Repository):
    """``store.tasks``: uploaded id files, and the tasks that walk a group send's audience."""

    # --- files ------------------------------------------------------------------------------------

    def create_file(self, app_key: str, kind: str, alias_type: str | None) -> str:
        file_id = "f" + ids.new_msg_id(self.clock.now())
        self._conn.execute(
            "INSERT INTO files (file_id, app_key, kind, alias_type, state, created_at) VALUES (?, ?, ?, ?, 'uploading', ?)",
            (file_id, app_key, kind, alias_type, self.clock.now()),
        )
        return file_id

    def append_file_lines(self, file_id: str, first_line_no: int, values: list[str]) -> None:
        with self._tx():
            self._conn.executemany(
                "INSERT INTO file_lines (file_id, line_no, value) VALUES (?, ?, ?)",
                [(file_id, first_line_no + i, v) for i, v in enumerate(values)],
            )

    def finish_file(self, file_id: str, lines: int) -> None:
        self._conn.execute("UPDATE files SET state = 'ready', lines = ? WHERE file_id = ?", (lines, file_id))

    def drop_file(self, file_id: str) -> None:
        with self._tx():
            self._conn.execute("DELETE FROM file_lines WHERE file_id = ?", (file_id,))
            self._conn.execute("DELETE FROM files WHERE file_id = ?", (file_id,))

    def file_info(self, app_key: str, file_id: str) -> FileInfo:
        row = self._conn.execute(
            "SELECT kind, alias_type, lines, created_at FROM files WHERE file_id = ? AND app_key = ? AND state = 'ready'",
            (file_id, app_key),
        ).fetchone()
        if row is None:
            raise NotFound(f"no file {file_id!r} in this app", code="unknown_file")
        return FileInfo(file_id, row[0], row[1], row[2], row[3])

    def file_values(self, file_id: str, after_line: int, limit: int) -> list[tuple[int, str]]:
        return [
            (r[0], r[1])
            for r in self._conn.execute(
                "SELECT line_no, value FROM file_lines WHERE file_id = ? AND line_no > ? ORDER BY line_no LIMIT ?",
                (file_id, after_line, limit),
            )
        ]

    # --- tasks ------------------------------------------------------------------------------------

    def task_record(self, task_id: str) -> TaskRecord | None:
        row = self._conn.execute(
            "SELECT t.task_id, t.app_key, t.msg_id, t.kind, t.state, m.target, m.policy, m.envelope, m.fanout,"
            " m.expires_at FROM tasks t JOIN messages m ON m.msg_id = t.msg_id WHERE t.task_id = ?",
            (task_id,),
        ).fetchone()
        if row is None:
            return None
        return TaskRecord(
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            json.loads(row[5]),
            json.loads(row[6]),
            bytes(row[7]),
            row[8],
            row[9],
        )

    def open_tasks(self) -> list[str]:
        return [
            r[0]
            for r in self._conn.execute(
                "SELECT task_id FROM tasks WHERE state IN ('pending', 'running') ORDER BY created_at"
            )
        ]

    def add_task_deliveries(self, task_id: str, msg_id: str, device_ids: list[str]) -> list[str]:
        """Insert one batch of a task's audience (idempotent); returns the device ids that are new."""
        now = self.clock.now()
        with self._tx():
            state = self._conn.execute("SELECT state FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
            if state is None or state[0] not in ("pending", "running"):
                return []
            fresh = self._insert_deliveries(msg_id, device_ids, now)
            self._conn.execute(
                "UPDATE tasks SET state = 'running', targeted = targeted + ?, updated_at = ? WHERE task_id = ?",
                (len(fresh), now, task_id),
            )
        return fresh

    def finish_task(self, task_id: str, state: str, error: str | None = None) -> None:
        now = self.clock.now()
        self._store.webhooks.task_finished(task_id, state, error)
        self._conn.execute(
            "UPDATE tasks SET state = ?, error = ?, updated_at = ?, finished_at = ? WHERE task_id = ?"
            " AND state IN ('pending', 'running')",
            (state, error, now, now, task_id),
        )

    def cancel_task(self, app_key: str, task_id: str) -> list[str]:
        """Cancel a task: no more deliveries; those not yet published become ``cancelled``.

        Returns the device ids whose deliveries were cancelled.
        """
        now = self.clock.now()
        with self._tx():
            row = self._conn.execute(
                "SELECT msg_id, state FROM tasks WHERE task_id = ? AND app_key = ?", (task_id, app_key)
            ).fetchone()
            if row is None:
                raise NotFound(f"no task {task_id!r} in this app", code="unknown_task")
            msg_id, state = row
            if state not in ("pending", "running"):
                raise Conflict(f"task {task_id} is already {state}", code="task_finished")
            self._store.webhooks.task_finished(task_id, "cancelled")
            self._conn.execute(
                "UPDATE tasks SET state = 'cancelled', updated_at = ?, finished_at = ? WHERE task_id = ?",
                (now, now, task_id),
            )
            devices = [
                r[0]
                for r in self._conn.execute(
                    "SELECT device_id FROM deliveries WHERE msg_id = ? AND state IN ('accepted', 'queued')",
                    (msg_id,),
                )
            ]
            for device_id in devices:
                self._record(msg_id, device_id, DeliveryState.CANCELLED, now, "task cancelled")
        return devices

    def task_status(self, app_key: str, task_id: str) -> TaskStatus:
        row = self._conn.execute(
            "SELECT msg_id, kind, state, targeted, error, created_at, finished_at FROM tasks"
            " WHERE task_id = ? AND app_key = ?",
            (task_id, app_key),
        ).fetchone()
        if row is None:
            raise NotFound(f"no task {task_id!r} in this app", code="unknown_task")
        msg_id, kind, state, _targeted, error, created_at, finished_at = row
        by_state = {str(s): int(n) for s, n in self._conn.execute(_TASK_COUNTS, (msg_id,))}
        return TaskStatus(
            task_id=task_id,
            msg_id=msg_id,
            kind=kind,
            state=state,
            targeted=sum(by_state.values()),
            published=_count(by_state, "published", "arrived", "opened", "dismissed"),
            forwarded=_count(by_state, "forwarded"),
            arrived=_count(by_state, "arrived", "opened", "dismissed"),
            opened=_count(by_state, "opened"),
            failed=_count(by_state, "failed", "dropped"),
            expired=_count(by_state, "expired"),
            cancelled=_count(by_state, "cancelled"),
            error=error,
            created_at=created_at,
            finished_at=finished_at,
        )
