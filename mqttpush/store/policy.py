"""Store queries for delivery policy (issue 5): lifecycle, idempotency, holds, re-push, settings."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mqttpush.errors import Conflict, NotFound
from mqttpush.models import DeliveryState
from mqttpush.store.core import StoreCore, chunks

HELD_BATCH = 5000


@dataclass(frozen=True, slots=True)
class MessageRecord:
    msg_id: str
    app_key: str
    kind: str
    state: str
    target: dict[str, Any]
    policy: dict[str, Any]
    envelope: bytes
    fanout: str
    expires_at: float
    next_run_at: float | None
    priority: int
    task_id: str | None
    occurrences: int


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A delivery whose hold ended or whose re-push is due."""

    msg_id: str
    app_key: str
    device_id: str
    envelope: bytes
    policy: dict[str, Any]
    priority: int
    fanout: str
    repushes: int


class PolicyQueries(StoreCore):
    # --- messages -----------------------------------------------------------------------------

    def find_biz_id(self, app_key: str, biz_id: str) -> dict[str, str] | None:
        """The answer already given for an idempotency key: ``{"msg_id"}`` or ``{"task_id", "msg_id"}``."""
        row = self._conn.execute(
            "SELECT m.msg_id, t.task_id FROM messages m LEFT JOIN tasks t ON t.msg_id = m.msg_id"
            " WHERE m.app_key = ? AND m.biz_id = ?",
            (app_key, biz_id),
        ).fetchone()
        if row is None:
            return None
        return {"task_id": row[1], "msg_id": row[0]} if row[1] else {"msg_id": row[0]}

    def message_record(self, msg_id: str) -> MessageRecord | None:
        row = self._conn.execute(
            "SELECT m.msg_id, m.app_key, m.kind, m.state, m.target, m.policy, m.envelope, m.fanout, m.expires_at,"
            " m.next_run_at, m.priority, t.task_id,"
            " (SELECT count(*) FROM messages c WHERE c.parent_msg_id = m.msg_id)"
            " FROM messages m LEFT JOIN tasks t ON t.msg_id = m.msg_id WHERE m.msg_id = ?",
            (msg_id,),
        ).fetchone()
        if row is None:
            return None
        return MessageRecord(
            row[0],
            row[1],
            row[2],
            row[3],
            json.loads(row[4]),
            json.loads(row[5]),
            bytes(row[6]),
            row[7],
            row[8],
            row[9],
            row[10],
            row[11],
            row[12],
        )

    def list_messages(self, app_key: str, state: str | None, limit: int) -> list[dict[str, Any]]:
        where, args = ("AND state = ?", [state]) if state else ("", [])
        rows = self._conn.execute(
            "SELECT msg_id, kind, state, created_at, next_run_at, approved_by, parent_msg_id FROM messages"
            f" WHERE app_key = ? {where} ORDER BY created_at DESC LIMIT ?",
            (app_key, *args, limit),
        )
        keys = ("msg_id", "kind", "state", "created_at", "next_run_at", "approved_by", "parent_msg_id")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def message_policies(self, msg_ids: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """``msg_id -> (app_key, policy)`` for many messages (the bridge re-checks them at start)."""
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        for chunk, marks in chunks(list(dict.fromkeys(msg_ids))):
            for msg_id, app_key, policy in self._conn.execute(
                f"SELECT msg_id, app_key, policy FROM messages WHERE msg_id IN ({marks})", chunk
            ):
                out[msg_id] = (app_key, json.loads(policy))
        return out

    def accepted_devices(self, msg_id: str) -> list[str]:
        return [
            r[0]
            for r in self._conn.execute(
                "SELECT device_id FROM deliveries WHERE msg_id = ? AND state = 'accepted'", (msg_id,)
            )
        ]

    def due_messages(self) -> list[str]:
        """Scheduled (or approved) messages whose time has come."""
        return [
            r[0]
            for r in self._conn.execute(
                "SELECT msg_id FROM messages WHERE state IN ('scheduled', 'approved') AND next_run_at <= ?"
                " ORDER BY priority, next_run_at",
                (self.clock.now(),),
            )
        ]

    def next_wakeup(self) -> float | None:
        """The earliest time something time-driven is due (schedule, hold, re-push, TTL)."""
        row = self._conn.execute(
            "SELECT min(t) FROM ("
            " SELECT min(next_run_at) AS t FROM messages WHERE state IN ('scheduled', 'approved')"
            " UNION ALL SELECT min(not_before) FROM deliveries WHERE state = 'queued'"
            " UNION ALL SELECT min(next_repush_at) FROM deliveries WHERE next_repush_at IS NOT NULL)"
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def activate(
        self,
        msg_id: str,
        envelope: bytes,
        expires_at: float,
        state: str = "active",
        next_run_at: float | None = None,
    ) -> None:
        """The message goes out now (or, for a series, schedules its next occurrence)."""
        self._conn.execute(
            "UPDATE messages SET state = ?, envelope = ?, expires_at = ?, next_run_at = ? WHERE msg_id = ?",
            (state, envelope, expires_at, next_run_at, msg_id),
        )

    def set_message_state(self, msg_id: str, state: str, next_run_at: float | None = None) -> None:
        self._conn.execute(
            "UPDATE messages SET state = ?, next_run_at = ? WHERE msg_id = ?", (state, next_run_at, msg_id)
        )

    def approve(self, app_key: str, msg_id: str, approver: str) -> str:
        """draft → approved (by whom, when); returns the message's new state."""
        now = self.clock.now()
        with self._tx():
            row = self._conn.execute(
                "SELECT state, next_run_at FROM messages WHERE msg_id = ? AND app_key = ?", (msg_id, app_key)
            ).fetchone()
            if row is None:
                raise NotFound(f"no message {msg_id!r} in this app", code="unknown_message")
            if row[0] != "draft":
                raise Conflict(f"message {msg_id} is {row[0]}, not a draft", code="not_a_draft")
            self._conn.execute(
                "UPDATE messages SET state = 'approved', approved_by = ?, approved_at = ?,"
                " next_run_at = CASE WHEN coalesce(next_run_at, 0) > ? THEN next_run_at ELSE ? END WHERE msg_id = ?",
                (approver, now, now, now, msg_id),
            )
        return "approved"

    def message_lifecycle(self, msg_id: str) -> dict[str, Any]:
        row = self._conn.execute(
            "SELECT state, priority, approved_by, approved_at, next_run_at, parent_msg_id, biz_id, start_at"
            " FROM messages WHERE msg_id = ?",
            (msg_id,),
        ).fetchone()
        keys = (
            "state",
            "priority",
            "approved_by",
            "approved_at",
            "next_run_at",
            "parent_msg_id",
            "biz_id",
            "start_at",
        )
        doc = dict(zip(keys, row, strict=True)) if row else {}
        if doc:
            doc["priority"] = "high" if doc["priority"] == 0 else "normal"
            doc["occurrences"] = [
                r[0]
                for r in self._conn.execute(
                    "SELECT msg_id FROM messages WHERE parent_msg_id = ? ORDER BY created_at", (msg_id,)
                )
            ]
        return doc

    def cancel_message(self, app_key: str, msg_id: str) -> tuple[str, list[str]]:
        """Stop a message that has not gone out (draft, scheduled, a series, a running task):
        undelivered deliveries become ``cancelled``. Returns (task_id or "", cancelled device ids)."""
        now = self.clock.now()
        with self._tx():
            row = self._conn.execute(
                "SELECT m.state, t.task_id, t.state FROM messages m LEFT JOIN tasks t ON t.msg_id = m.msg_id"
                " WHERE m.msg_id = ? AND m.app_key = ?",
                (msg_id, app_key),
            ).fetchone()
            if row is None:
                raise NotFound(f"no message {msg_id!r} in this app", code="unknown_message")
            state, task_id, task_state = row
            if state in ("cancelled", "recalled", "done"):
                raise Conflict(f"message {msg_id} is already {state}", code="already_finished")
            self._conn.execute(
                "UPDATE messages SET state = 'cancelled', next_run_at = NULL WHERE msg_id = ?", (msg_id,)
            )
            if task_id and task_state in ("pending", "running"):
                self.webhooks.task_finished(task_id, "cancelled")
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
                self._record(msg_id, device_id, DeliveryState.CANCELLED, now, "cancelled")
        return task_id or "", devices

    def recall(self, app_key: str, msg_id: str) -> tuple[str, list[str]]:
        """Take back a message not yet opened: every delivery short of opened/dismissed becomes
        ``cancelled`` (detail ``recalled``). Returns (fanout, device ids that may hold it)."""
        now = self.clock.now()
        with self._tx():
            row = self._conn.execute(
                "SELECT fanout, state FROM messages WHERE msg_id = ? AND app_key = ?", (msg_id, app_key)
            ).fetchone()
            if row is None:
                raise NotFound(f"no message {msg_id!r} in this app", code="unknown_message")
            if row[1] == "recalled":
                raise Conflict(f"message {msg_id} is already recalled", code="already_finished")
            rows = self._conn.execute(
                "SELECT device_id, state FROM deliveries WHERE msg_id = ?"
                " AND state IN ('accepted', 'queued', 'published', 'forwarded', 'arrived')",
                (msg_id,),
            ).fetchall()
            for device_id, _ in rows:
                self._record(msg_id, device_id, DeliveryState.CANCELLED, now, "recalled")
            self._conn.execute("UPDATE deliveries SET next_repush_at = NULL WHERE msg_id = ?", (msg_id,))
            self._conn.execute(
                "UPDATE messages SET state = 'recalled', next_run_at = NULL WHERE msg_id = ?", (msg_id,)
            )
            self.webhooks.message_tasks_finished(msg_id, "cancelled")
            self._conn.execute(
                "UPDATE tasks SET state = 'cancelled', updated_at = ?, finished_at = ? WHERE msg_id = ?"
                " AND state IN ('pending', 'running')",
                (now, now, msg_id),
            )
        return str(row[0]), [d for d, s in rows if s in ("published", "forwarded", "arrived")]

    # --- holds, caps, re-push, inbox bound ----------------------------------------------------

    def sent_since(self, since: dict[str, float]) -> dict[str, int]:
        """How many messages each device was sent (``published``) since the given time."""
        return {
            device_id: int(
                self._conn.execute(
                    "SELECT count(*) FROM delivery_events WHERE device_id = ? AND state = 'published' AND at >= ?",
                    (device_id, t),
                ).fetchone()[0]
            )
            for device_id, t in since.items()
        }

    def hold(self, msg_id: str, holds: dict[str, tuple[float, str]]) -> None:
        """Deliveries wait (``queued``) until a time: quiet hours, a daily cap, pacing."""
        now = self.clock.now()
        with self._tx():
            for device_id, (until, reason) in holds.items():
                row = self._conn.execute(
                    "SELECT state FROM deliveries WHERE msg_id = ? AND device_id = ?", (msg_id, device_id)
                ).fetchone()
                if row is None or row[0] not in ("accepted", "queued"):
                    continue
                if row[0] == "accepted":
                    self._record(msg_id, device_id, DeliveryState.QUEUED, now, reason)
                self._conn.execute(
                    "UPDATE deliveries SET not_before = ? WHERE msg_id = ? AND device_id = ?",
                    (until, msg_id, device_id),
                )

    def drop(
        self,
        msg_id: str,
        device_ids: Iterable[str],
        reason: str,
        state: DeliveryState = DeliveryState.DROPPED,
    ) -> None:
        """End deliveries not yet delivered: ``dropped(reason)`` (or another terminal ``state``)."""
        now = self.clock.now()
        with self._tx():
            for device_id in device_ids:
                row = self._conn.execute(
                    "SELECT state FROM deliveries WHERE msg_id = ? AND device_id = ?", (msg_id, device_id)
                ).fetchone()
                if row is not None and row[0] in ("accepted", "queued", "published"):
                    self._record(msg_id, device_id, state, now, reason)
                    self._conn.execute(
                        "UPDATE deliveries SET next_repush_at = NULL WHERE msg_id = ? AND device_id = ?",
                        (msg_id, device_id),
                    )

    def due_held(self) -> list[DueDelivery]:
        """Held deliveries whose time has come; their hold is cleared so they are picked once."""
        now = self.clock.now()
        with self._tx():
            rows = self._conn.execute(
                "SELECT d.msg_id, m.app_key, d.device_id, m.envelope, m.policy, m.priority, m.fanout, d.repushes"
                " FROM deliveries d JOIN messages m ON m.msg_id = d.msg_id"
                " WHERE d.state = 'queued' AND d.not_before <= ? ORDER BY m.priority, d.not_before LIMIT ?",
                (now, HELD_BATCH),
            ).fetchall()
            self._conn.executemany(
                "UPDATE deliveries SET not_before = NULL WHERE msg_id = ? AND device_id = ?",
                [(r[0], r[2]) for r in rows],
            )
        return [DueDelivery(r[0], r[1], r[2], bytes(r[3]), json.loads(r[4]), r[5], r[6], r[7]) for r in rows]

    def set_repush(self, keys: list[tuple[str, str]], at: float) -> None:
        self._conn.executemany(
            "UPDATE deliveries SET next_repush_at = ? WHERE msg_id = ? AND device_id = ?",
            [(at, m, d) for m, d in keys],
        )

    def due_repushes(self) -> list[DueDelivery]:
        """Deliveries published (or arrived) but not opened whose re-push time has come."""
        now = self.clock.now()
        rows = self._conn.execute(
            "SELECT d.msg_id, m.app_key, d.device_id, m.envelope, m.policy, m.priority, m.fanout, d.repushes"
            " FROM deliveries d JOIN messages m ON m.msg_id = d.msg_id"
            " WHERE d.next_repush_at <= ? AND d.state IN ('published', 'arrived') AND m.expires_at > ?"
            " LIMIT ?",
            (now, now, HELD_BATCH),
        ).fetchall()
        return [DueDelivery(r[0], r[1], r[2], bytes(r[3]), json.loads(r[4]), r[5], r[6], r[7]) for r in rows]

    def mark_repushed(self, msg_id: str, device_id: str, next_at: float | None) -> None:
        now = self.clock.now()
        with self._tx():
            self._conn.execute(
                "UPDATE deliveries SET repushes = repushes + 1, attempts = attempts + 1, next_repush_at = ?"
                " WHERE msg_id = ? AND device_id = ?",
                (next_at, msg_id, device_id),
            )
            self._events([(msg_id, device_id, "published", now, "repush")])

    def ended(self, keys: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
        """Of these ``(msg, device)``, those in a terminal state: ``(app, device, msg)``."""
        out = []
        for msg_id, device_id in keys:
            row = self._conn.execute(
                "SELECT m.app_key, d.state FROM deliveries d JOIN messages m ON m.msg_id = d.msg_id"
                " WHERE d.msg_id = ? AND d.device_id = ?",
                (msg_id, device_id),
            ).fetchone()
            if row is not None and row[1] in ("cancelled", "expired", "dropped", "failed"):
                out.append((row[0], device_id, msg_id))
        return out

    def stop_repush(self, msg_id: str, device_id: str) -> None:
        self._conn.execute(
            "UPDATE deliveries SET next_repush_at = NULL WHERE msg_id = ? AND device_id = ?",
            (msg_id, device_id),
        )

    def inbox_overflow(self, device_ids: list[str], limit: int) -> list[tuple[str, str, str]]:
        """Deliveries beyond ``limit`` waiting in a device's inbox, oldest first: ``(app, device, msg)``."""
        out: list[tuple[str, str, str]] = []
        for chunk, marks in chunks(list(dict.fromkeys(device_ids))):
            over = self._conn.execute(
                "SELECT d.device_id, count(*) FROM deliveries d JOIN messages m ON m.msg_id = d.msg_id"
                f" WHERE d.device_id IN ({marks}) AND d.state = 'published' AND m.fanout = 'inbox'"
                " GROUP BY d.device_id HAVING count(*) > ?",
                (*chunk, limit),
            ).fetchall()
            for device_id, count in over:
                out += [
                    (r[0], device_id, r[1])
                    for r in self._conn.execute(
                        "SELECT m.app_key, d.msg_id FROM deliveries d JOIN messages m ON m.msg_id = d.msg_id"
                        " WHERE d.device_id = ? AND d.state = 'published' AND m.fanout = 'inbox'"
                        " ORDER BY d.msg_id LIMIT ?",
                        (device_id, count - limit),
                    )
                ]
        return out
