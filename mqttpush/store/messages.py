"""Messages and their deliveries: a push accepted with its deliveries in one transaction, the
moves of each delivery (transitions, receipts, TTL expiry), what is pending, the message's
lifecycle (drafts, schedules, approval, cancel, recall, idempotency keys) and the policy's holds,
caps, re-pushes and inbox bound (issue 5)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mqttpush.errors import Conflict, NotFound
from mqttpush.models import (
    PENDING_STATES,
    DeliveryEvent,
    DeliveryState,
    DeliveryStatus,
    MessageStatus,
    PendingDelivery,
    ReceiptEvent,
    advances,
)
from mqttpush.store import postgres as pg
from mqttpush.store.core import Event, Repository, chunks

_PENDING = tuple(s.value for s in PENDING_STATES)
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


@dataclass(frozen=True, slots=True)
class KnownPush:
    """The push an idempotency key (``biz_id``) already named: its message, and its task if it
    was a group send."""

    msg_id: str
    task_id: str | None


@dataclass(frozen=True, slots=True)
class MessageSummary:
    """One message in a listing (``GET /api/v1/messages``)."""

    msg_id: str
    kind: str
    state: str
    created_at: float
    next_run_at: float | None
    approved_by: str | None
    parent_msg_id: str | None


@dataclass(frozen=True, slots=True)
class MessageLifecycle:
    """Where a message is in its life: state, approval, schedule, the series it belongs to."""

    state: str
    priority: int
    """0 high, 1 normal."""
    approved_by: str | None
    approved_at: float | None
    next_run_at: float | None
    parent_msg_id: str | None
    biz_id: str | None
    start_at: float | None
    occurrences: tuple[str, ...]
    """The messages a recurring schedule sent, oldest first."""


class MessageRepository(Repository):
    """``store.messages``: every query of one message and its deliveries."""

    # --- accepting, moving, receipts, expiry ------------------------------------------------

    def accept_message(
        self,
        *,
        msg_id: str,
        app_key: str,
        kind: str,
        target: dict[str, Any],
        envelope: bytes,
        policy: dict[str, Any],
        expires_at: float,
        device_ids: list[str],
        fanout: str = "inbox",
        task_id: str | None = None,
        state: str = "active",
        priority: int = 1,
        next_run_at: float | None = None,
        parent_msg_id: str | None = None,
        check_devices: bool = False,
    ) -> None:
        """Commit a message, one ``accepted`` delivery per device and its task (if any), in one transaction.

        Raises :class:`Conflict` (``duplicate_biz_id``) if the app already used the policy's ``biz_id``;
        with ``check_devices``, :class:`NotFound` (``unknown_device``) unless every device is the
        app's (checked in the same transaction: one store call for a push to a device list).
        """
        now = self.clock.now()
        with self._tx():
            if check_devices:
                self._store.devices.require_known(app_key, device_ids)
            try:
                self._conn.execute(
                    "INSERT INTO messages (msg_id, app_key, kind, target, envelope, policy, biz_id, created_at,"
                    " start_at, expires_at, fanout, state, priority, next_run_at, parent_msg_id)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        msg_id,
                        app_key,
                        kind,
                        json.dumps(target),
                        envelope,
                        json.dumps(policy),
                        None if parent_msg_id else policy.get("biz_id"),
                        now,
                        policy.get("start_at"),
                        expires_at,
                        fanout,
                        state,
                        priority,
                        next_run_at,
                        parent_msg_id,
                    ),
                )
            except (sqlite3.IntegrityError, pg.IntegrityError):
                raise Conflict(
                    f"biz_id {policy.get('biz_id')!r} was already used", code="duplicate_biz_id"
                ) from None
            self._insert_deliveries(msg_id, device_ids, now, new_message=True)
            if task_id is not None:
                self._conn.execute(
                    "INSERT INTO tasks (task_id, app_key, msg_id, kind, state, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                    (task_id, app_key, msg_id, kind, now, now),
                )

    def publish_all(self, msg_id: str) -> int:
        """After the one broadcast publish: every ``accepted`` delivery of the message is ``published``."""
        now = self.clock.now()
        with self._tx():
            accepted = self._conn.execute(
                "SELECT device_id FROM deliveries WHERE msg_id = ? AND state = 'accepted'", (msg_id,)
            ).fetchall()
            self._events([(msg_id, r[0], "published", now, None) for r in accepted])
            cur = self._conn.execute(
                "UPDATE deliveries SET state = 'published', updated_at = ? WHERE msg_id = ? AND state = 'accepted'",
                (now, msg_id),
            )
        return cur.rowcount

    def transition(
        self, keys: Iterable[tuple[str, str]], state: DeliveryState, detail: str | None = None
    ) -> list[tuple[str, str]]:
        """Move deliveries ``(msg_id, device_id)`` to ``state`` where that is a step forward.

        One transaction for the whole batch, one ``UPDATE … RETURNING`` per message and chunk of
        devices (a 1,000-device push was 3,000 statements); returns the keys that moved, in order.
        A move to ``published`` counts one attempt (a send on the MQTT channel).
        """
        now = self.clock.now()
        wanted = list(dict.fromkeys(keys))
        by_msg: dict[str, list[str]] = {}
        for msg_id, device_id in wanted:
            by_msg.setdefault(msg_id, []).append(device_id)
        sources = [s.value for s in DeliveryState if advances(s, state)]
        if not sources:
            return []  # nothing moves into the first state
        error = detail if state in (DeliveryState.FAILED, DeliveryState.DROPPED) else None
        attempt = 1 if state is DeliveryState.PUBLISHED else 0
        moved: set[tuple[str, str]] = set()
        with self._tx():
            for msg_id, device_ids in by_msg.items():
                for chunk, marks in chunks(device_ids, 400):
                    rows = self._conn.execute(
                        "UPDATE deliveries SET state = ?, updated_at = ?, error = coalesce(?, error),"
                        f" attempts = attempts + ? WHERE msg_id = ? AND device_id IN ({marks})"
                        f" AND state IN ({','.join('?' * len(sources))}) RETURNING device_id",
                        (state.value, now, error, attempt, msg_id, *chunk, *sources),
                    ).fetchall()
                    moved.update((msg_id, r[0]) for r in rows)
            done = [k for k in wanted if k in moved]
            self._events([(m, d, state.value, now, detail) for m, d in done])
        return done

    def apply_receipt(self, app_key: str, device_id: str, msg_id: str, event: ReceiptEvent) -> str | None:
        """Store a device's receipt. Returns the message's fanout (``inbox``: its inbox topic can be
        cleared now; ``topic``: a broadcast), or None for a receipt that matches no delivery."""
        return self.apply_receipts([(app_key, device_id, msg_id, event)])[0]

    def apply_receipts(self, receipts: list[tuple[str, str, str, ReceiptEvent]]) -> list[str | None]:
        """Many receipts ``(app, device, msg, event)`` in one transaction (receipts come in bursts:
        one fsync, not one each). Returns each one's fanout, as :meth:`apply_receipt` does.

        Set-based: the batch's messages and deliveries are read with a few ``IN`` queries, each
        receipt is decided in Python in arrival order (a repeat, or ``arrived`` then ``opened`` for
        one delivery, acts as if applied one at a time), and the moves are written with
        ``executemany`` and ``UPDATE … IN`` per message (1,000 receipts were 4,000 statements).
        """
        now = self.clock.now()
        with self._tx():
            messages = self._receipt_messages(list(dict.fromkeys(m for _, _, m, _ in receipts)))
            keys = [(m, d) for a, d, m, _ in receipts if m in messages and messages[m][0] == a]
            states = self._receipt_states(list(dict.fromkeys(keys)))
            before = dict(states)
            events: list[Event] = []
            fanouts = [
                self._apply_receipt(a, d, m, e, now, messages, states, events) for a, d, m, e in receipts
            ]
            joined = [k for k in states if k not in before]
            self._conn.executemany(
                "INSERT INTO deliveries (msg_id, device_id, channel, state, updated_at) VALUES (?, ?, 'mqtt', ?, ?)",
                [(m, d, states[m, d].value, now) for m, d in joined],
            )
            moved: dict[tuple[str, DeliveryState], list[str]] = {}
            for (m, d), s in states.items():
                if (m, d) in before and before[m, d] is not s:
                    moved.setdefault((m, s), []).append(d)
            self._receipt_moves(moved, now)
            self._events(events)
        return fanouts

    def _receipt_moves(self, moved: dict[tuple[str, DeliveryState], list[str]], now: float) -> None:
        """Write the final states: ``(msg_id, state) → device ids``. Receipts never move a delivery
        to failed/dropped, so ``error`` is left as it is."""
        singles = [(s.value, now, m, ds[0]) for (m, s), ds in moved.items() if len(ds) == 1]
        self._conn.executemany(
            "UPDATE deliveries SET state = ?, updated_at = ? WHERE msg_id = ? AND device_id = ?", singles
        )
        # The devices of one list push: in one UPDATE … IN (…) each costs about half a statement.
        for (msg_id, state), device_ids in moved.items():
            if len(device_ids) > 1:
                for chunk, marks in chunks(device_ids, 400):
                    self._conn.execute(
                        f"UPDATE deliveries SET state = ?, updated_at = ? WHERE msg_id = ? AND device_id IN ({marks})",
                        (state.value, now, msg_id, *chunk),
                    )

    def _receipt_messages(self, msg_ids: list[str]) -> dict[str, tuple[str, str, float]]:
        """``msg_id → (app_key, fanout, expires_at)`` of those that exist."""
        found: dict[str, tuple[str, str, float]] = {}
        for chunk, marks in chunks(msg_ids):
            for msg_id, app_key, fanout, expires_at in self._conn.execute(
                f"SELECT msg_id, app_key, fanout, expires_at FROM messages WHERE msg_id IN ({marks})", chunk
            ):
                found[msg_id] = (str(app_key), str(fanout), float(expires_at))
        return found

    def _receipt_states(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], DeliveryState]:
        """The current state of each delivery ``(msg_id, device_id)`` that exists."""
        found: dict[tuple[str, str], DeliveryState] = {}
        for i in range(0, len(keys), 400):
            chunk = keys[i : i + 400]
            # CROSS JOIN keeps the key list outside: one primary-key lookup per key, never a scan.
            for msg_id, device_id, state in self._conn.execute(
                f"SELECT d.msg_id, d.device_id, d.state FROM (VALUES {','.join(['(?, ?)'] * len(chunk))}) k"
                " CROSS JOIN deliveries d WHERE d.msg_id = k.column1 AND d.device_id = k.column2",
                [x for key in chunk for x in key],
            ):
                found[msg_id, device_id] = DeliveryState(state)
        return found

    @staticmethod
    def _apply_receipt(
        app_key: str,
        device_id: str,
        msg_id: str,
        event: ReceiptEvent,
        now: float,
        messages: dict[str, tuple[str, str, float]],
        states: dict[tuple[str, str], DeliveryState],
        events: list[Event],
    ) -> str | None:
        """Decide one receipt against the batch's view: moves ``states`` and appends to ``events``
        the history rows, in order. Returns the fanout, or None for no such delivery."""
        msg = messages.get(msg_id)
        if msg is None or msg[0] != app_key:
            return None
        fanout, expired = msg[1], msg[2] <= now
        key = (msg_id, device_id)
        current = states.get(key)
        if current is None and fanout == "topic" and expired:
            return fanout  # too late to join the broadcast
        if current is None and fanout == "topic":
            # A device that registered after the broadcast went out still gets it (retained): count it.
            events.append((msg_id, device_id, DeliveryState.ACCEPTED.value, now, None))
            events.append((msg_id, device_id, DeliveryState.PUBLISHED.value, now, "joined broadcast"))
            current = DeliveryState.PUBLISHED
        if current is None:
            return None
        if expired and current in PENDING_STATES:
            # Past its TTL before the sweep got to it: the device did not have it in time.
            events.append((msg_id, device_id, DeliveryState.EXPIRED.value, now, "ttl"))
            current = DeliveryState.EXPIRED
        else:
            new = DeliveryState(event.value)
            if advances(current, new):
                # opened/dismissed imply arrival: keep the arrival time in the history too
                if new is not DeliveryState.ARRIVED and advances(current, DeliveryState.ARRIVED):
                    events.append((msg_id, device_id, DeliveryState.ARRIVED.value, now, "implied"))
                events.append((msg_id, device_id, new.value, now, None))
                current = new
        # A receipt that moves nothing (a late "arrived" after "opened", a repeat) is no transition:
        # the history stays a forward path.
        states[key] = current
        return fanout

    def pending_deliveries(self) -> list[PendingDelivery]:
        """Every undelivered, unexpired delivery of a message that is out: what the bridge re-publishes
        at start, and whenever the broker lost its retained messages (docs/split.md). Drafts and
        scheduled messages wait for their time; held deliveries for theirs.

        A live broadcast none of whose deliveries is pending (every device had it, or there was
        none) still comes once, with an empty ``device_id``: its retained topic is what devices
        that register later receive, so it must be published again too.

        Deliveries past their TTL are marked ``expired`` here, so none is handed out late (call
        :meth:`expire_due` first to learn which retained topics to clear)."""
        now = self.clock.now()
        marks = ",".join("?" * len(_PENDING))
        with self._tx():
            self._expire_deliveries(now)
            rows = self._conn.execute(
                "SELECT d.msg_id, m.app_key, d.device_id, d.state, m.envelope, m.expires_at, m.fanout"
                " FROM deliveries d JOIN messages m ON m.msg_id = d.msg_id"
                f" WHERE d.state IN ({marks}) AND m.expires_at > ? AND m.state = 'active'"
                " AND (d.state != 'queued' OR d.not_before IS NULL)"
                " UNION ALL"
                " SELECT m.msg_id, m.app_key, '', 'published', m.envelope, m.expires_at, m.fanout"
                " FROM messages m WHERE m.fanout = 'topic' AND m.state = 'active' AND m.expires_at > ?"
                " AND m.cleared_at IS NULL AND NOT EXISTS (SELECT 1 FROM deliveries d"
                f" WHERE d.msg_id = m.msg_id AND d.state IN ({marks})) ORDER BY 1",
                (*_PENDING, now, now, *_PENDING),
            ).fetchall()
        return [PendingDelivery(r[0], r[1], r[2], DeliveryState(r[3]), bytes(r[4]), r[5], r[6]) for r in rows]

    def expire_due(self) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
        """Apply TTLs: pending deliveries past their message's expiry become ``expired``.

        Returns what to clear: ``(app, device, msg)`` inbox topics, and ``(app, msg)`` broadcast
        topics (each once, whether or not devices still had it pending).
        """
        now = self.clock.now()
        with self._tx():
            rows = self._expire_deliveries(now)
            broadcasts = self._conn.execute(
                "SELECT app_key, msg_id FROM messages WHERE fanout = 'topic' AND cleared_at IS NULL AND expires_at <= ?",
                (now,),
            ).fetchall()
            self._conn.executemany(
                "UPDATE messages SET cleared_at = ? WHERE msg_id = ?", [(now, m) for _, m in broadcasts]
            )
        inboxes = [(r[0], r[1], r[2]) for r in rows if r[3] != "topic"]
        return inboxes, [(r[0], r[1]) for r in broadcasts]

    def _expire_deliveries(self, now: float) -> list[tuple[str, str, str, str]]:
        """Pending deliveries past their message's expiry become ``expired``: ``(app, device, msg, fanout)``."""
        marks = ",".join("?" * len(_PENDING))
        rows: list[tuple[str, str, str, str]] = self._conn.execute(
            "SELECT m.app_key, d.device_id, d.msg_id, m.fanout FROM deliveries d"
            " JOIN messages m ON m.msg_id = d.msg_id"
            f" WHERE d.state IN ({marks}) AND m.expires_at <= ?",
            (*_PENDING, now),
        ).fetchall()
        for _app_key, device_id, msg_id, _fanout in rows:
            self._record(msg_id, device_id, DeliveryState.EXPIRED, now, "ttl")
        return rows

    def message_status(self, app_key: str, msg_id: str) -> MessageStatus | None:
        msg = self._conn.execute(
            "SELECT created_at, expires_at FROM messages WHERE msg_id = ? AND app_key = ?", (msg_id, app_key)
        ).fetchone()
        if msg is None:
            return None
        history: dict[str, list[DeliveryEvent]] = {}
        for device_id, state, at, detail in self._conn.execute(
            "SELECT device_id, state, at, detail FROM delivery_events WHERE msg_id = ? ORDER BY at, rowid",
            (msg_id,),
        ):
            history.setdefault(device_id, []).append(DeliveryEvent(state, at, detail or None))
        deliveries = [
            DeliveryStatus(r[0], r[1], r[2], r[3], r[4], r[5], tuple(history.get(r[0], ())))
            for r in self._conn.execute(
                "SELECT device_id, state, channel, attempts, error, updated_at FROM deliveries"
                " WHERE msg_id = ? ORDER BY device_id",
                (msg_id,),
            )
        ]
        return MessageStatus(msg_id, app_key, msg[0], msg[1], deliveries)

    # --- lifecycle, idempotency, listings ----------------------------------------------------

    def find_biz_id(self, app_key: str, biz_id: str) -> KnownPush | None:
        """The push an idempotency key already named, if any."""
        row = self._conn.execute(
            "SELECT m.msg_id, t.task_id FROM messages m LEFT JOIN tasks t ON t.msg_id = m.msg_id"
            " WHERE m.app_key = ? AND m.biz_id = ?",
            (app_key, biz_id),
        ).fetchone()
        if row is None:
            return None
        return KnownPush(row[0], row[1])

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

    def list_messages(self, app_key: str, state: str | None, limit: int) -> list[MessageSummary]:
        where, args = ("AND state = ?", [state]) if state else ("", [])
        rows = self._conn.execute(
            "SELECT msg_id, kind, state, created_at, next_run_at, approved_by, parent_msg_id FROM messages"
            f" WHERE app_key = ? {where} ORDER BY created_at DESC LIMIT ?",
            (app_key, *args, limit),
        )
        return [MessageSummary(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]

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

    def message_lifecycle(self, msg_id: str) -> MessageLifecycle | None:
        row = self._conn.execute(
            "SELECT state, priority, approved_by, approved_at, next_run_at, parent_msg_id, biz_id, start_at"
            " FROM messages WHERE msg_id = ?",
            (msg_id,),
        ).fetchone()
        if row is None:
            return None
        occurrences = self._conn.execute(
            "SELECT msg_id FROM messages WHERE parent_msg_id = ? ORDER BY created_at", (msg_id,)
        )
        return MessageLifecycle(
            state=row[0],
            priority=row[1],
            approved_by=row[2],
            approved_at=row[3],
            next_run_at=row[4],
            parent_msg_id=row[5],
            biz_id=row[6],
            start_at=row[7],
            occurrences=tuple(r[0] for r in occurrences),
        )

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
            self._store.webhooks.message_tasks_finished(msg_id, "cancelled")
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
