"""Leases on bridge work, so that several bridges over one store run each piece of work once and
the work of a bridge that died is finished by another (docs/scale-out.md, "Leases").

- **Bridges**: each bridge process holds a row in ``bridge_leases`` under its own owner id and
  renews it while it lives (:meth:`LeaseRepository.heartbeat`). A row that lapsed is taken over by
  one live bridge (:meth:`~LeaseRepository.take_over`), which then re-handles what the store still
  calls pending: deliveries the dead bridge had accepted, released from a hold, or was retrying
  with a vendor (they stay ``accepted`` until an outcome is stored).
- **Group tasks**: claimed one by one (:meth:`~LeaseRepository.claim_task`); every batch of the
  audience commits its deliveries, the task's progress (the last device id or file line walked)
  and the renewed lease in one transaction (:meth:`~LeaseRepository.add_task_batch`), so a task
  taken over resumes exactly where the dead bridge's last commit left it.
- **Scheduled sends**: a due message is claimed before it is activated
  (:meth:`~LeaseRepository.claim_due_messages`).
- **Re-push timers**: claimed by moving the timer one lease ahead
  (:meth:`~LeaseRepository.claim_repushes`); the re-push sets the next real time, and a bridge that
  dies in between leaves the timer to fire again on another bridge when the lease ends.

Every claim is one ``UPDATE … WHERE <claimable> AND key IN (SELECT key … WHERE <claimable> LIMIT ?)
RETURNING …``: atomic on SQLite (one writer), and on PostgreSQL the outer condition is checked
again on the row version it updates, so two bridges never both get a row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mqttpush.store.core import Repository, chunks
from mqttpush.store.messages import HELD_BATCH, DueDelivery

KEEP_TAKEN_SECONDS = 24 * 3600
"""How long the row of a bridge that was taken over is kept (for operators), then deleted."""

_OPEN_TASK = "state IN ('pending', 'running')"
_DUE_MESSAGE = "state IN ('scheduled', 'approved') AND next_run_at <= ?"
_FREE = "(lease_until IS NULL OR lease_until < ?)"
_DUE_REPUSH = "next_repush_at <= ? AND state IN ('published', 'arrived')"


@dataclass(frozen=True, slots=True)
class TaskClaim:
    """A task this bridge now holds: where its audience walk got to (None: at the start)."""

    task_id: str
    progress: str | None


class LeaseRepository(Repository):
    # --- bridge processes ---------------------------------------------------------------------

    def heartbeat(self, owner: str, seconds: float) -> bool:
        """Renew this bridge's lease for ``seconds`` (creating its row). False if another bridge had
        taken it over meanwhile (this one looked dead: a stall longer than the lease); the row is
        then live again, and what was taken over is merely handled twice (devices dedupe by id)."""
        now = self.clock.now()
        with self._tx() as conn:
            before = conn.execute("SELECT taken_by FROM bridge_leases WHERE owner = ?", (owner,)).fetchone()
            conn.execute(
                "INSERT INTO bridge_leases (owner, started_at, lease_until) VALUES (?, ?, ?)"
                " ON CONFLICT (owner) DO UPDATE SET lease_until = excluded.lease_until,"
                " taken_by = NULL, taken_at = NULL",
                (owner, now, now + seconds),
            )
        return before is None or before[0] is None

    def take_over(self, owner: str, limit: int = 100, *, alone: bool = False) -> list[str]:
        """Claim the rows of bridges whose lease lapsed (not ``owner``'s own); returns their owners.
        ``alone``: this bridge knows no other runs on the store (it holds the SQLite data dir's
        bridge lock), so every other row is a dead bridge's, lapsed or not. Rows taken over more
        than :data:`KEEP_TAKEN_SECONDS` ago are deleted."""
        now = self.clock.now()
        until = float("inf") if alone else now
        with self._tx() as conn:
            taken = [
                str(r[0])
                for r in conn.execute(
                    "UPDATE bridge_leases SET taken_by = ?, taken_at = ?"
                    " WHERE taken_by IS NULL AND lease_until < ? AND owner != ? AND owner IN ("
                    "  SELECT owner FROM bridge_leases WHERE taken_by IS NULL AND lease_until < ? AND owner != ?"
                    f"  ORDER BY lease_until LIMIT ?{self._skip_locked()})"
                    " RETURNING owner",
                    (owner, now, until, owner, until, owner, limit),
                ).fetchall()
            ]
            conn.execute("DELETE FROM bridge_leases WHERE taken_at < ?", (now - KEEP_TAKEN_SECONDS,))
        return sorted(taken)

    def hand_over(self, owner: str) -> None:
        """A bridge stopping cleanly: its lease ends now, so another bridge takes over what it
        leaves pending, and its tasks are free to be claimed at once."""
        now = self.clock.now()
        with self._tx() as conn:
            conn.execute("UPDATE bridge_leases SET lease_until = ? WHERE owner = ?", (now - 1e-6, owner))
            conn.execute(
                "UPDATE tasks SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?", (owner,)
            )
            conn.execute(
                "UPDATE messages SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?", (owner,)
            )

    def bridges(self) -> list[dict[str, object]]:
        """Every bridge row: ``owner``, ``started_at``, ``lease_until``, ``taken_by``, ``taken_at``."""
        keys = ("owner", "started_at", "lease_until", "taken_by", "taken_at")
        return [
            dict(zip(keys, r, strict=True))
            for r in self._conn.execute(
                "SELECT owner, started_at, lease_until, taken_by, taken_at FROM bridge_leases ORDER BY started_at"
            )
        ]

    # --- group tasks --------------------------------------------------------------------------

    def claim_tasks(self, owner: str, seconds: float, limit: int = 100, *, alone: bool = False) -> list[str]:
        """Claim open tasks nobody holds (or whose holder's lease lapsed), oldest first; ``alone``
        as in :meth:`take_over`: every open task."""
        now = self.clock.now()
        until = float("inf") if alone else now
        rows = self._conn.execute(
            f"UPDATE tasks SET lease_owner = ?, lease_until = ? WHERE {_OPEN_TASK} AND {_FREE} AND task_id IN ("
            f" SELECT task_id FROM tasks WHERE {_OPEN_TASK} AND {_FREE} ORDER BY created_at LIMIT ?{self._skip_locked()})"
            " RETURNING task_id, created_at",
            (owner, now + seconds, until, until, limit),
        ).fetchall()
        return [str(r[0]) for r in sorted(rows, key=lambda r: (r[1], r[0]))]

    def claim_task(self, task_id: str, owner: str, seconds: float) -> TaskClaim | None:
        """Take (or renew) the lease of one open task; None if it is finished or another bridge
        holds it."""
        now = self.clock.now()
        row = self._conn.execute(
            f"UPDATE tasks SET lease_owner = ?, lease_until = ? WHERE task_id = ? AND {_OPEN_TASK}"
            " AND (lease_owner = ? OR lease_until IS NULL OR lease_until < ?) RETURNING progress",
            (owner, now + seconds, task_id, owner, now),
        ).fetchone()
        return None if row is None else TaskClaim(task_id, row[0])

    def add_task_batch(
        self,
        task_id: str,
        owner: str,
        seconds: float,
        msg_id: str,
        device_ids: list[str],
        progress: str,
    ) -> list[str] | None:
        """Commit one batch of a task's audience, its progress and the renewed lease together.

        Returns the device ids whose deliveries are new (inserts are idempotent), or None when the
        task is no longer this bridge's to walk: finished, cancelled, or taken over after the
        lease lapsed. Then nothing is written."""
        now = self.clock.now()
        with self._tx() as conn:
            held = conn.execute(
                f"UPDATE tasks SET state = 'running', lease_until = ?, progress = ?, updated_at = ?"
                f" WHERE task_id = ? AND lease_owner = ? AND {_OPEN_TASK} RETURNING task_id",
                (now + seconds, progress, now, task_id, owner),
            ).fetchone()
            if held is None:
                return None
            fresh = self._insert_deliveries(msg_id, device_ids, now) if device_ids else []
            if fresh:
                conn.execute(
                    "UPDATE tasks SET targeted = targeted + ? WHERE task_id = ?", (len(fresh), task_id)
                )
        return fresh

    def release_task(self, task_id: str, owner: str) -> None:
        """Give a task's lease back (this bridge stops walking it; another may claim it at once)."""
        self._conn.execute(
            "UPDATE tasks SET lease_owner = NULL, lease_until = NULL WHERE task_id = ? AND lease_owner = ?",
            (task_id, owner),
        )

    def task_lease(self, task_id: str) -> tuple[str | None, float | None, str | None]:
        """``(lease_owner, lease_until, progress)`` of a task."""
        row = self._conn.execute(
            "SELECT lease_owner, lease_until, progress FROM tasks WHERE task_id = ?", (task_id,)
        ).fetchone()
        return (None, None, None) if row is None else (row[0], row[1], row[2])

    # --- scheduled sends ----------------------------------------------------------------------

    def claim_due_messages(self, owner: str, seconds: float, limit: int = 100) -> list[str]:
        """Claim scheduled (or approved) messages whose time has come, high priority and earliest
        first; the caller activates each, then :meth:`release_message`."""
        now = self.clock.now()
        rows = self._conn.execute(
            f"UPDATE messages SET lease_owner = ?, lease_until = ? WHERE {_DUE_MESSAGE} AND {_FREE}"
            f" AND msg_id IN (SELECT msg_id FROM messages WHERE {_DUE_MESSAGE} AND {_FREE}"
            f"  ORDER BY priority, next_run_at LIMIT ?{self._skip_locked()})"
            " RETURNING msg_id, priority, next_run_at",
            (owner, now + seconds, now, now, now, now, limit),
        ).fetchall()
        return [str(r[0]) for r in sorted(rows, key=lambda r: (r[1], r[2], r[0]))]

    def release_message(self, msg_id: str, owner: str) -> None:
        self._conn.execute(
            "UPDATE messages SET lease_owner = NULL, lease_until = NULL WHERE msg_id = ? AND lease_owner = ?",
            (msg_id, owner),
        )

    # --- re-push timers -----------------------------------------------------------------------

    def claim_repushes(self, seconds: float, limit: int = HELD_BATCH) -> list[DueDelivery]:
        """Deliveries published (or arrived) but not opened whose re-push is due, each claimed by
        moving its timer ``seconds`` ahead: the re-push then sets the next real time
        (``mark_repushed``), and if this bridge dies first the timer fires again elsewhere."""
        now = self.clock.now()
        claimed = self._conn.execute(
            f"UPDATE deliveries SET next_repush_at = ? WHERE {_DUE_REPUSH} AND (msg_id, device_id) IN ("
            " SELECT d.msg_id, d.device_id FROM deliveries d JOIN messages m ON m.msg_id = d.msg_id"
            "  WHERE d.next_repush_at <= ? AND d.state IN ('published', 'arrived') AND m.expires_at > ?"
            f"  LIMIT ?{self._skip_locked('d')})"
            " RETURNING msg_id, device_id, repushes",
            (now + seconds, now, now, now, limit),
        ).fetchall()
        messages: dict[str, tuple[str, bytes, str, int, str]] = {}
        for chunk, marks in chunks(list(dict.fromkeys(r[0] for r in claimed))):
            for msg_id, app_key, envelope, policy, priority, fanout in self._conn.execute(
                f"SELECT msg_id, app_key, envelope, policy, priority, fanout FROM messages WHERE msg_id IN ({marks})",
                chunk,
            ):
                messages[msg_id] = (app_key, bytes(envelope), policy, priority, fanout)
        out = []
        for msg_id, device_id, repushes in sorted(claimed, key=lambda r: (r[0], r[1])):
            app_key, envelope, policy, priority, fanout = messages[msg_id]
            out.append(
                DueDelivery(
                    msg_id, app_key, device_id, envelope, json.loads(policy), priority, fanout, repushes
                )
            )
        return out

    # --- when to look again -------------------------------------------------------------------

    def next_wakeup(self) -> float | None:
        """The earliest time something time-driven is due: a schedule (or, while another bridge
        holds it, the end of that lease), a hold, a re-push."""
        row = self._conn.execute(
            "SELECT min(t) FROM ("
            " SELECT min(CASE WHEN lease_until > next_run_at THEN lease_until ELSE next_run_at END) AS t"
            "  FROM messages WHERE state IN ('scheduled', 'approved')"
            " UNION ALL SELECT min(not_before) AS t FROM deliveries WHERE state = 'queued'"
            " UNION ALL SELECT min(next_repush_at) AS t FROM deliveries WHERE next_repush_at IS NOT NULL"
            ") AS due"
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None
