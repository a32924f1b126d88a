"""Store queries of the web console (docs/console.md): sign-in sessions and the paged lists its pages
read. Every list is a keyset page (``WHERE key < cursor ORDER BY key DESC LIMIT n``) over an index
of migration 0013 or older, so a page costs the same on the first page and the ten-thousandth."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

from mqttpush import ids
from mqttpush.errors import InvalidContent, NotFound
from mqttpush.store.core import Repository, chunks

MAX_PAGE = 200


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    app_key: str
    csrf_token: str
    via: str
    token_id: str | None
    expires_at: float


def _session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _cursor(raw: str | None) -> tuple[float, str] | None:
    """``"<created_at>~<id>"`` as the previous page ended; None for the first page."""
    if not raw:
        return None
    at, _, key = raw.partition("~")
    try:
        value = float(at)
    except ValueError:
        value = float("nan")
    if value != value or not ids.is_valid_id(key):  # NaN: not a number at all
        raise InvalidContent(f"not a page cursor: {raw[:60]!r}", code="bad_cursor")
    return value, key


def _page_size(limit: int) -> int:
    return max(1, min(int(limit), MAX_PAGE))


def _time_range(since: float | None, until: float | None) -> None:
    if since is not None and until is not None and since > until:
        raise InvalidContent("the time range ends before it starts (since > until)", code="bad_range")


class ConsoleRepository(Repository):
    """``store.console``: what only the console asks of the store."""

    # --- sessions -------------------------------------------------------------------------------

    def create_session(
        self, app_key: str, via: str, token_id: str | None, lifetime: float
    ) -> tuple[str, ConsoleSession]:
        """A new session; returns (the cookie value, the session). Expired sessions go at the same time."""
        session_id = secrets.token_urlsafe(32)
        now = self.clock.now()
        session = ConsoleSession(app_key, secrets.token_urlsafe(32), via, token_id, now + lifetime)
        with self._tx() as conn:
            conn.execute("DELETE FROM console_sessions WHERE expires_at <= ?", (now,))
            conn.execute(
                "INSERT INTO console_sessions (session_hash, app_key, csrf_token, via, token_id, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    _session_hash(session_id),
                    app_key,
                    session.csrf_token,
                    via,
                    token_id,
                    now,
                    session.expires_at,
                ),
            )
        return session_id, session

    def session(self, session_id: str) -> ConsoleSession | None:
        """The live session behind a cookie value, or None (unknown, signed out or expired; or
        signed in with an access token that has since been revoked or has expired)."""
        now = self.clock.now()
        row = self._conn.execute(
            "SELECT s.app_key, s.csrf_token, s.via, s.token_id, s.expires_at FROM console_sessions s"
            " LEFT JOIN app_tokens t ON t.token_id = s.token_id"
            " WHERE s.session_hash = ? AND s.expires_at > ? AND (s.token_id IS NULL OR"
            " (t.token_id IS NOT NULL AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > ?)))",
            (_session_hash(session_id), now, now),
        ).fetchone()
        return ConsoleSession(*row) if row else None

    def end_session(self, session_id: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM console_sessions WHERE session_hash = ?", (_session_hash(session_id),))

    # --- messages and tasks -----------------------------------------------------------------------

    def messages_page(
        self,
        app_key: str,
        *,
        state: str | None = None,
        since: float | None = None,
        until: float | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> dict[str, Any]:
        """Messages newest first: ``{"messages": [...], "next": cursor | None}``."""
        columns = (
            "msg_id, kind, state, created_at, start_at, next_run_at, expires_at, approved_by,"
            " parent_msg_id, biz_id, envelope"
        )
        rows, n = self._newest_first("messages", columns, app_key, state, since, until, cursor, limit)
        messages = []
        for r in rows[:n]:
            envelope = _envelope(r[10])
            messages.append(
                {
                    "msg_id": r[0],
                    "kind": r[1],
                    "state": r[2],
                    "created_at": r[3],
                    "start_at": r[4],
                    "next_run_at": r[5],
                    "expires_at": r[6],
                    "approved_by": r[7],
                    "parent_msg_id": r[8],
                    "biz_id": r[9],
                    "title": envelope.get("title"),
                    "body": envelope.get("body"),
                    "task_id": None,
                    "counts": {},
                }
            )
        self._attach_counts(messages)
        last = rows[n - 1] if len(rows) > n else None
        return {"messages": messages, "next": f"{last[3]!r}~{last[0]}" if last else None}

    def _newest_first(
        self,
        table: str,
        columns: str,
        app_key: str,
        state: str | None,
        since: float | None,
        until: float | None,
        cursor: str | None,
        limit: int,
    ) -> tuple[list[Any], int]:
        """One keyset page of an app's ``messages`` or ``tasks`` (key: the table's id column, the
        first of ``columns``), newest first, and the page size: one row more is read, to know
        whether a next page exists."""
        key = columns.split(",", 1)[0].strip()
        _time_range(since, until)
        where, args = self._page_filter("state", state, since, until, _cursor(cursor), key)
        n = _page_size(limit)
        rows = self._conn.execute(
            f"SELECT {columns} FROM {table}"
            f" WHERE app_key = ?{where} ORDER BY created_at DESC, {key} DESC LIMIT ?",
            (app_key, *args, n + 1),
        ).fetchall()
        return rows, n

    def _page_filter(
        self,
        state_column: str,
        state: str | None,
        since: float | None,
        until: float | None,
        after: tuple[float, str] | None,
        key: str,
    ) -> tuple[str, list[Any]]:
        where, args = "", list[Any]()
        if state:
            where += f" AND {state_column} = ?"
            args.append(state)
        if since is not None:
            where += " AND created_at >= ?"
            args.append(since)
        if until is not None:
            where += " AND created_at < ?"
            args.append(until)
        if after is not None:
            where += f" AND (created_at < ? OR (created_at = ? AND {key} < ?))"
            args += [after[0], after[0], after[1]]
        return where, args

    def _attach_counts(self, messages: list[dict[str, Any]]) -> None:
        """Delivery counts by state and the task of each message (its id is ``"t" + msg_id``)."""
        if not messages:
            return
        by_id = {m["msg_id"]: m for m in messages}
        for chunk, marks in chunks(list(by_id)):
            for msg_id, state, count in self._conn.execute(
                f"SELECT msg_id, state, count(*) FROM deliveries WHERE msg_id IN ({marks}) GROUP BY msg_id, state",
                chunk,
            ):
                by_id[msg_id]["counts"][state] = count
            tasks = ["t" + m for m in chunk]
            for task_id, msg_id in self._conn.execute(
                f"SELECT task_id, msg_id FROM tasks WHERE task_id IN ({marks})", tasks
            ):
                by_id[msg_id]["task_id"] = task_id

    def tasks_page(
        self,
        app_key: str,
        *,
        state: str | None = None,
        since: float | None = None,
        until: float | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> dict[str, Any]:
        """Group sends newest first, with their progress: ``{"tasks": [...], "next": cursor | None}``."""
        keys = ("task_id", "msg_id", "kind", "state", "targeted", "error", "created_at", "finished_at")
        rows, n = self._newest_first("tasks", ", ".join(keys), app_key, state, since, until, cursor, limit)
        tasks = [dict(zip(keys, r, strict=True)) | {"counts": {}} for r in rows[:n]]
        by_msg = {t["msg_id"]: t for t in tasks}
        for chunk, marks in chunks(list(by_msg)):
            for msg_id, state, count in self._conn.execute(
                f"SELECT msg_id, state, count(*) FROM deliveries WHERE msg_id IN ({marks}) GROUP BY msg_id, state",
                chunk,
            ):
                by_msg[msg_id]["counts"][state] = count
        last = rows[n - 1] if len(rows) > n else None
        return {"tasks": tasks, "next": f"{last[6]!r}~{last[0]}" if last else None}

    # --- one message --------------------------------------------------------------------------------

    def message_summary(self, app_key: str, msg_id: str) -> dict[str, Any]:
        """A message as its detail page shows it: target, policy, envelope, lifecycle, counts by state."""
        row = self._conn.execute(
            "SELECT msg_id, kind, target, policy, envelope, state, created_at, start_at, expires_at,"
            " next_run_at, approved_by, approved_at, parent_msg_id, biz_id, fanout FROM messages"
            " WHERE msg_id = ? AND app_key = ?",
            (msg_id, app_key),
        ).fetchone()
        if row is None:
            raise NotFound(f"no message {msg_id!r} in this app", code="unknown_message")
        keys = (
            "msg_id",
            "kind",
            "target",
            "policy",
            "envelope",
            "state",
            "created_at",
            "start_at",
            "expires_at",
            "next_run_at",
            "approved_by",
            "approved_at",
            "parent_msg_id",
            "biz_id",
            "fanout",
        )
        doc = dict(zip(keys, row, strict=True))
        doc["target"], doc["policy"] = json.loads(doc["target"]), json.loads(doc["policy"])
        doc["envelope_bytes"] = len(bytes(row[4]))
        doc["envelope"] = _envelope(row[4])
        doc["task_id"] = None
        doc["counts"] = {}
        self._attach_counts([doc])
        task = self._conn.execute(
            "SELECT task_id, state, targeted, error, created_at, finished_at FROM tasks WHERE task_id = ?",
            ("t" + msg_id,),
        ).fetchone()
        task_keys = ("task_id", "state", "targeted", "error", "created_at", "finished_at")
        doc["task"] = dict(zip(task_keys, task, strict=True)) if task else None
        return doc

    def deliveries_page(
        self,
        app_key: str,
        msg_id: str,
        *,
        state: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> dict[str, Any]:
        """One page of a message's deliveries by device id, each with its history (timeline)."""
        owner = self._conn.execute("SELECT app_key FROM messages WHERE msg_id = ?", (msg_id,)).fetchone()
        if owner is None or owner[0] != app_key:
            raise NotFound(f"no message {msg_id!r} in this app", code="unknown_message")
        if cursor and not ids.is_valid_id(cursor):
            raise InvalidContent(f"not a page cursor: {cursor[:60]!r}", code="bad_cursor")
        where, args = "", list[Any]()
        if state:
            where += " AND state = ?"
            args.append(state)
        if cursor:
            where += " AND device_id > ?"
            args.append(cursor)
        n = _page_size(limit)
        rows = self._conn.execute(
            "SELECT device_id, state, channel, attempts, error, updated_at FROM deliveries"
            f" WHERE msg_id = ?{where} ORDER BY device_id LIMIT ?",
            (msg_id, *args, n + 1),
        ).fetchall()
        keys = ("device_id", "state", "channel", "attempts", "error", "updated_at")
        deliveries = [dict(zip(keys, r, strict=True)) | {"history": []} for r in rows[:n]]
        by_device = {d["device_id"]: d for d in deliveries}
        for chunk, marks in chunks(list(by_device)):
            events = self._conn.execute(
                "SELECT device_id, state, at, detail FROM delivery_events"
                f" WHERE msg_id = ? AND device_id IN ({marks}) ORDER BY at",
                (msg_id, *chunk),
            )
            for device_id, event_state, at, detail in events:
                event: dict[str, Any] = {"state": event_state, "at": at}
                if detail:
                    event["detail"] = detail
                by_device[device_id]["history"].append(event)
        return {
            "msg_id": msg_id,
            "deliveries": deliveries,
            "next": deliveries[-1]["device_id"] if len(rows) > n else None,
        }

    # --- devices ------------------------------------------------------------------------------------

    def find_devices(self, app_key: str, query: str, limit: int = 20) -> list[dict[str, str]]:
        """Devices of the app whose id, install id or alias (of any type) is ``query``."""
        found: dict[str, str] = {}
        row = self._conn.execute(
            "SELECT device_id FROM devices WHERE device_id = ? AND app_key = ?", (query, app_key)
        ).fetchone()
        if row:
            found[row[0]] = "device_id"
        row = self._conn.execute(
            "SELECT device_id FROM devices WHERE app_key = ? AND install_id = ?", (app_key, query)
        ).fetchone()
        if row:
            found.setdefault(row[0], "install_id")
        for device_id, alias_type in self._conn.execute(
            "SELECT device_id, alias_type FROM aliases WHERE app_key = ? AND alias = ? ORDER BY device_id LIMIT ?",
            (app_key, query, limit),
        ):
            found.setdefault(device_id, f"alias ({alias_type})")
        return [{"device_id": d, "matched": how} for d, how in list(found.items())[:limit]]

    def recent_deliveries(self, device_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """A device's latest messages (msg ids sort by creation time), with each one's title."""
        rows = self._conn.execute(
            "SELECT msg_id, state, channel, updated_at FROM deliveries WHERE device_id = ?"
            " ORDER BY msg_id DESC LIMIT ?",
            (device_id, _page_size(limit)),
        ).fetchall()
        titles: dict[str, Any] = {}
        for chunk, marks in chunks([r[0] for r in rows]):
            for msg_id, envelope in self._conn.execute(
                f"SELECT msg_id, envelope FROM messages WHERE msg_id IN ({marks})", chunk
            ):
                titles[msg_id] = _envelope(envelope).get("title")
        keys = ("msg_id", "state", "channel", "updated_at")
        return [dict(zip(keys, r, strict=True)) | {"title": titles.get(r[0])} for r in rows]


def _envelope(raw: bytes | None) -> dict[str, Any]:
    try:
        obj = json.loads(bytes(raw or b"{}"))
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}
