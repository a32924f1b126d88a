"""Delivery statistics (docs/statistics.md): ``store.stats``.

Every delivery history row the store writes is shown to :meth:`StatsRepository.count` (a
transition listener, on the store thread, inside the writing transaction). It only counts in
memory, a batch of rows at a time (about a thousand, and whatever is there at each flush and
query): dimensions come from small caches (message → app and type, device → platform and app
version, delivery → the channels that carried it so far), whose misses are filled with one query
per batch, never one per row or per push. :meth:`StatsRepository.flush` (every few seconds, and on
stop) adds the counts to the per-minute, per-hour and per-day tables in one transaction of
upserts, and applies each table's retention. A query adds the counts not flushed yet, so answers
are current; a crash loses at most the counts since the last flush (docs/statistics.md says why).

Funnels of a message or task are counted from its deliveries and their history: exact, always.
"""

from __future__ import annotations

import calendar
import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mqttpush.errors import InvalidContent, NotFound
from mqttpush.store.core import Event, Repository, StoreCore, chunks

COUNTERS = (
    "targeted",
    "published",
    "forwarded",
    "arrived",
    "opened",
    "dismissed",
    "failed",
    "expired",
    "dropped",
    "cancelled",
)
"""The counters of every point, in the order of the tables' columns (``targeted`` = accepted)."""
REASON_COUNTERS = ("failed", "dropped")
"""What a series grouped by ``reason`` counts."""
DIMENSIONS = ("platform", "channel", "type", "app_version")
GROUP_BY = (*DIMENSIONS, "vendor", "reason")
VENDORS = frozenset({"apns", "fcm", "hms", "mipush", "webpush"})
STEPS = {"1m": 60, "1h": 3600, "1d": 86400}
MAX_POINTS = 10_000
"""Points a series may have (the range divided by the step)."""
MAX_TOTAL_POINTS = 200_000
"""Points of all series of one answer together."""
NO_CHANNEL = "none"
"""The channel of a delivery that no channel carried yet (accepted, held, expired unsent)."""

_INDEX = {
    "accepted": 0,
    "published": 1,
    "forwarded": 2,
    "arrived": 3,
    "opened": 4,
    "dismissed": 5,
    "failed": 6,
    "expired": 7,
    "dropped": 8,
    "cancelled": 9,
}
_NEEDS_CARRIED = frozenset(_INDEX) - {"accepted"}
_TABLES = {60: "stats_minute", 3600: "stats_hour", 86400: "stats_day"}
_REASON_TABLES = {60: "stats_reason_minute", 3600: "stats_reason_hour", 86400: "stats_reason_day"}
_RETENTION_EVERY = 3600.0  # seconds between retention passes
_DEVICE_REFRESH = 600.0  # seconds a device's platform and app version are taken from the cache
_BATCH_ROWS = 1024  # history rows counted together (and at every flush and query)
_MAX_MESSAGES = 50_000
_MAX_DEVICES = 200_000
_MAX_DELIVERIES = 100_000
_UNKNOWN_MESSAGE = ("", "")
_UNKNOWN_DEVICE = ("", "")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_NUMBER = re.compile(r"^\d{1,12}(?:\.\d+)?$")

log = logging.getLogger("mqttpush.stats")

Key = tuple[str, int, str, str, str, str]
"""``(app_key, minute, platform, channel, type, app_version)``."""
ReasonKey = tuple[str, int, str, str, str, str, str, str]
"""A :data:`Key` and ``(state, reason)``."""


@dataclass(frozen=True)
class Retention:
    """Days each granularity is kept (docs/statistics.md, "Retention")."""

    minute_days: float = 7
    hour_days: float = 90
    day_days: float = 3 * 365


def failure_reason(detail: str | None) -> str:
    """The reason a failure or drop is counted under: the history detail without the vendor's name
    (``fcm: UNREGISTERED`` → ``UNREGISTERED``), up to its first ``:`` or ``;``, at most 64 characters."""
    if not detail:
        return "unknown"
    vendor, sep, rest = detail.partition(": ")
    text = rest if sep and vendor in VENDORS else detail
    return re.split(r"[:;]", text, maxsplit=1)[0].strip()[:64] or "unknown"


def event_vendor(state: str, detail: str | None) -> str | None:
    """The vendor a ``forwarded`` or a vendor's ``failed`` history row names, else None."""
    if not detail:
        return None
    if state == "forwarded":
        return detail
    if state == "failed":
        vendor, sep, _ = detail.partition(": ")
        return vendor if sep and vendor in VENDORS else None
    return None


_ENVELOPE_HEAD = 256
# Envelopes start {"id":…,"app":…,"type":"…" (mqttpush/envelope.py); ids and app keys hold no quote.
_TYPE = re.compile(rb'^\{"id":"[^"]*","app":"[^"]*","type":"([a-z_]{1,32})"')


def _envelope_type(head: bytes, msg_id: str, conn: Any) -> str:
    """The envelope's ``type`` from its first bytes; the whole envelope parsed if it is laid out
    otherwise (a store written by another version)."""
    match = _TYPE.match(head)
    if match is not None:
        return match.group(1).decode()
    row = conn.execute("SELECT envelope FROM messages WHERE msg_id = ?", (msg_id,)).fetchone()
    try:
        return str(json.loads(bytes(row[0])).get("type") or "")
    except (ValueError, AttributeError, TypeError):
        return ""


def _join(carried: str, channel: str) -> str:
    if carried in (NO_CHANNEL, channel):
        return channel
    parts = set(carried.split(","))
    parts.add(channel)
    return ",".join(sorted(parts))


# --- ranges (pure: the API, the CLI and the console parse the same way) ----------------------


def parse_time(value: str | float | int, now: float, name: str) -> float:
    """Unix seconds, ISO 8601 (a time without zone is UTC), or relative to ``now`` (``90s``,
    ``15m``, ``24h``, ``7d``, ``2w``: that long ago). Raises ``bad_range`` naming ``name``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and value >= 0:
            return float(value)
        raise InvalidContent(f"{name}: not a time: {value!r}", code="bad_range")
    text = str(value).strip()
    if _NUMBER.match(text):
        return float(text)
    relative = _RELATIVE.match(text.lower())
    if relative:
        return now - float(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise InvalidContent(
            f"{name}: {text[:40]!r} is not unix seconds, ISO 8601 or relative (24h, 7d)", code="bad_range"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def parse_step(step: str | None, span: float) -> int:
    """``1m``, ``1h`` or ``1d`` in seconds; None picks one for the span (about 60 to 720 points)."""
    if step is None or step == "":
        if span <= 6 * 3600:
            return 60
        if span <= 31 * 86400:
            return 3600
        return 86400
    size = STEPS.get(step.strip())
    if size is None:
        raise InvalidContent(f"step: {step[:20]!r} is not one of 1m, 1h, 1d", code="bad_step")
    return size


def parse_by(by: str | Sequence[str] | None) -> list[str]:
    """The group-by dimensions, from ``"platform,channel"`` or a list; unknown ones are refused."""
    if by is None:
        return []
    names = by.split(",") if isinstance(by, str) else list(by)
    out: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name not in GROUP_BY:
            raise InvalidContent(
                f"by: {name[:40]!r} is not one of {', '.join(GROUP_BY)}", code="unknown_group_by"
            )
        if name not in out:
            out.append(name)
    return out


def step_name(size: int) -> str:
    return next(name for name, seconds in STEPS.items() if seconds == size)


def month_range(month: str) -> tuple[float, float]:
    """``2026-11`` → the UTC month's ``(start, end)`` in unix seconds; raises ``bad_range``."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", month.strip())
    if match is None or not 1 <= int(match.group(2)) <= 12:
        raise InvalidContent(f"month: {month[:20]!r} is not YYYY-MM", code="bad_range")
    year, number = int(match.group(1)), int(match.group(2))
    start = calendar.timegm((year, number, 1, 0, 0, 0))
    end = calendar.timegm((year + number // 12, number % 12 + 1, 1, 0, 0, 0))
    return float(start), float(end)


def rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


class StatsRepository(Repository):
    """``store.stats``: counting (once :meth:`enable`\\ d), flushing, queries, funnels, reports."""

    def __init__(self, store: StoreCore) -> None:
        super().__init__(store)
        self.enabled = False
        self.retention = Retention()
        self._counts: dict[Key, list[int]] = {}
        self._reasons: dict[ReasonKey, int] = {}
        self._messages: dict[str, tuple[str, str]] = {}
        self._devices: dict[str, tuple[str, str]] = {}
        self._devices_read_at = 0.0
        self._carried: dict[tuple[str, str], str] = {}
        self._deferred: list[Event] = []
        self._retained_at = 0.0

    # --- counting: on the store thread, inside the transaction that writes the rows ------------

    def enable(self, retention: Retention | None = None) -> None:
        """Start counting every history row the store writes (the server calls this at start)."""
        if retention is not None:
            self.retention = retention
        if not self.enabled:
            self.enabled = True
            self._store.transition_listeners.append(self.count)

    def count(self, conn: Any, rows: list[Event]) -> None:
        """The transition listener (``conn`` is the store's own connection, in the writing
        transaction): keep the rows, and count them once a batch is together, so that what the
        caches lack is read with one query for many pushes, not one per single-device push."""
        self._deferred += rows
        if len(self._deferred) >= _BATCH_ROWS:
            try:
                self._drain()
            except Exception:  # a push must never fail for its statistics
                log.exception("statistics: %d history rows not counted", len(rows))

    def _drain(self) -> None:
        """Count the rows kept so far into the unflushed per-minute counts."""
        rows, self._deferred = self._deferred, []
        if not rows:
            return
        messages, devices, carried = self._messages, self._devices, self._carried
        missing = {r[0] for r in rows}.difference(messages)
        absent = {r[1] for r in rows}.difference(devices)
        # Rows that need a delivery's channels so far (not the accepted row, not a row naming its
        # vendor) that this process has not seen yet, here or before: after a restart, or trimmed.
        fresh = {(m, d) for m, d, s, _, _ in rows if s == "accepted"}
        unknown = {
            (m, d)
            for m, d, s, _, detail in rows
            if s in _NEEDS_CARRIED
            and (m, d) not in carried
            and (m, d) not in fresh
            and (s != "failed" or event_vendor(s, detail) is None)
        }
        if missing:
            self._load_messages(list(missing))
        if absent:
            self._load_devices(list(absent))
        if unknown:
            self._load_carried(unknown)
        counts, reasons = self._counts, self._reasons
        ended: list[tuple[str, str]] = []
        last_at, minute, last_msg, app_key, kind = -1.0, 0, "", "", ""
        for msg_id, device_id, state, at, detail in rows:
            index = _INDEX.get(state)
            if index is None:
                continue  # queued: a hold, not a step of the funnel
            if msg_id != last_msg:  # a batch is mostly one message's rows, at one time
                last_msg = msg_id
                app_key, kind = messages.get(msg_id, _UNKNOWN_MESSAGE)
            if not app_key:
                continue
            if at != last_at:
                last_at, minute = at, int(at // 60) * 60
            platform, version = devices.get(device_id, _UNKNOWN_DEVICE)
            key = (msg_id, device_id)
            if index == 0:  # accepted
                channel = NO_CHANNEL
                carried[key] = NO_CHANNEL
            elif index == 1:  # published
                channel = "mqtt"
                before = carried.get(key, NO_CHANNEL)
                carried[key] = channel if before == NO_CHANNEL else _join(before, channel)
            elif index == 2:  # forwarded
                channel = detail or "vendor"
                carried[key] = _join(carried.get(key, NO_CHANNEL), channel)
            else:
                channel = event_vendor(state, detail) or carried.get(key, NO_CHANNEL)
                ended.append(key)
            bucket = (app_key, minute, platform, channel, kind, version)
            counter = counts.get(bucket)
            if counter is None:
                counter = counts[bucket] = [0] * len(COUNTERS)
            counter[index] += 1
            if state in REASON_COUNTERS:
                reason_key = (*bucket, state, failure_reason(detail))
                reasons[reason_key] = reasons.get(reason_key, 0) + 1
        # Past their channels: a receipt or an end. A later row (opened after arrived) reads them
        # again, in a batch; holding every arrived delivery would cost more memory.
        for key in ended:
            carried.pop(key, None)
        if len(carried) > _MAX_DELIVERIES:
            _trim(carried, _MAX_DELIVERIES)

    def _load_messages(self, msg_ids: list[str]) -> None:
        if len(self._messages) + len(msg_ids) > _MAX_MESSAGES:
            _trim(self._messages, _MAX_MESSAGES - len(msg_ids))
        for chunk, marks in chunks(msg_ids):
            for msg_id, app_key, head in self._conn.execute(
                f"SELECT msg_id, app_key, substr(envelope, 1, {_ENVELOPE_HEAD}) FROM messages"
                f" WHERE msg_id IN ({marks})",
                chunk,
            ):
                self._messages[msg_id] = (str(app_key), _envelope_type(bytes(head), msg_id, self._conn))

    def _load_devices(self, device_ids: list[str]) -> None:
        if len(self._devices) + len(device_ids) > _MAX_DEVICES:
            _trim(self._devices, _MAX_DEVICES - len(device_ids))
        for chunk, marks in chunks(device_ids):
            for device_id, platform, version in self._conn.execute(
                f"SELECT device_id, platform, app_version FROM devices WHERE device_id IN ({marks})", chunk
            ):
                self._devices[device_id] = (str(platform or ""), str(version or ""))

    def _load_carried(self, keys: Iterable[tuple[str, str]]) -> None:
        """What carried each delivery so far, from its history (the rows being counted are in it
        already; none of them is a channel's after a receipt, so they change nothing that matters)."""
        by_msg: dict[str, list[str]] = {}
        for msg_id, device_id in keys:
            by_msg.setdefault(msg_id, []).append(device_id)
            self._carried[msg_id, device_id] = NO_CHANNEL
        for msg_id, device_ids in by_msg.items():
            for chunk, marks in chunks(device_ids, 400):
                for device_id, state, detail in self._conn.execute(
                    "SELECT device_id, state, detail FROM delivery_events"
                    f" WHERE msg_id = ? AND device_id IN ({marks}) AND state IN ('published', 'forwarded')",
                    (msg_id, *chunk),
                ):
                    channel = "mqtt" if state == "published" else str(detail or "vendor")
                    key = (msg_id, device_id)
                    self._carried[key] = _join(self._carried[key], channel)

    # --- flushing -------------------------------------------------------------------------

    def flush(self) -> int:
        """Add the unflushed counts to the minute, hour and day tables (one transaction), then
        apply retention if it is due. Returns how many minute rows were written."""
        self._drain()
        counts, reasons = self._counts, self._reasons
        now = self.clock.now()
        if not 0 <= now - self._devices_read_at < _DEVICE_REFRESH:
            self._devices.clear()  # app versions change: read the devices again now and then
            self._devices_read_at = now
        retain = not 0 <= now - self._retained_at < _RETENTION_EVERY
        if not counts and not reasons and not retain:
            return 0
        self._counts, self._reasons = {}, {}
        try:
            with self._tx():
                for size, table in _TABLES.items():
                    self._upsert(table, _roll(counts, size))
                for size, table in _REASON_TABLES.items():
                    self._upsert_reasons(table, _roll_reasons(reasons, size))
                if retain:
                    self._retain(now)
        except BaseException:
            _merge(self._counts, counts)  # not written: keep them for the next flush
            for key, n in reasons.items():
                self._reasons[key] = self._reasons.get(key, 0) + n
            raise
        if retain:
            self._retained_at = now
        return len(counts)

    def _upsert(self, table: str, rows: dict[Key, list[int]]) -> None:
        if not rows:
            return
        names = ", ".join(COUNTERS)
        adds = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in COUNTERS)
        self._conn.executemany(
            f"INSERT INTO {table} (app_key, t, platform, channel, type, app_version, {names})"
            f" VALUES ({', '.join('?' * (6 + len(COUNTERS)))})"
            f" ON CONFLICT (app_key, t, platform, channel, type, app_version) DO UPDATE SET {adds}",
            [(*key, *values) for key, values in rows.items()],
        )

    def _upsert_reasons(self, table: str, rows: dict[ReasonKey, int]) -> None:
        if not rows:
            return
        self._conn.executemany(
            f"INSERT INTO {table} (app_key, t, platform, channel, type, app_version, state, reason, n)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (app_key, t, platform, channel, type, app_version, state, reason)"
            f" DO UPDATE SET n = {table}.n + excluded.n",
            [(*key, n) for key, n in rows.items()],
        )

    def _retain(self, now: float) -> None:
        r = self.retention
        for size, days in ((60, r.minute_days), (3600, r.hour_days), (86400, r.day_days)):
            if days <= 0:
                continue  # 0: keep forever
            cutoff = int(now - days * 86400) // size * size
            self._conn.execute(f"DELETE FROM {_TABLES[size]} WHERE t < ?", (cutoff,))
            self._conn.execute(f"DELETE FROM {_REASON_TABLES[size]} WHERE t < ?", (cutoff,))

    # --- queries --------------------------------------------------------------------------

    def query(
        self,
        app_key: str,
        since: str | float | None = None,
        until: str | float | None = None,
        by: str | Sequence[str] | None = None,
        step: str | None = None,
    ) -> dict[str, Any]:
        """``GET /api/v1/stats``: the app's counters per time bucket, one series per combination
        of the ``by`` dimensions, zero points included (docs/statistics.md, "API")."""
        self._drain()
        now = self.clock.now()
        start = parse_time(since, now, "since") if since not in (None, "") else now - 86400
        end = parse_time(until, now, "until") if until not in (None, "") else now
        if end <= start:
            raise InvalidContent("until must be after since", code="bad_range")
        dims = parse_by(by)
        size = parse_step(step, end - start)
        first = int(start // size) * size
        # Buckets that start before ``until``; without one, up to and with the bucket of now.
        points = math.ceil((end - first) / size) if until not in (None, "") else int(end - first) // size + 1
        if points > MAX_POINTS:
            raise InvalidContent(
                f"{points} points of {step_name(size)} from since to until, over {MAX_POINTS}:"
                " use a larger step or a shorter range",
                code="bad_range",
            )
        last = first + points * size
        by_reason = "reason" in dims
        counters = REASON_COUNTERS if by_reason else COUNTERS
        cells: dict[tuple[str, ...], dict[int, list[int]]] = {}
        for row in self._rows(app_key, size, first, last, by_reason):
            t = int(row[0])
            platform, channel, kind, version = str(row[1]), str(row[2]), str(row[3]), str(row[4])
            if "vendor" in dims and channel not in VENDORS:
                continue
            values = {"platform": platform, "channel": channel, "type": kind, "app_version": version}
            values["vendor"] = channel
            if by_reason:
                state, reason, n = str(row[5]), str(row[6]), int(row[7])
                values["reason"] = reason
                numbers = [n if state == "failed" else 0, n if state == "dropped" else 0]
            else:
                numbers = [int(v) for v in row[5:]]
            bucket = t // size * size
            series = cells.setdefault(tuple(values[d] for d in dims), {})
            cell = series.get(bucket)
            if cell is None:
                series[bucket] = numbers
            else:
                for i, n in enumerate(numbers):
                    cell[i] += n
        if not dims:
            cells.setdefault((), {})
        if points * len(cells) > MAX_TOTAL_POINTS:
            raise InvalidContent(
                f"{len(cells)} series of {points} points, over {MAX_TOTAL_POINTS} points:"
                " use a larger step, a shorter range or fewer group-bys",
                code="bad_range",
            )
        zero = [0] * len(counters)
        totals = [0] * len(counters)
        out = []
        for values_key in sorted(cells):
            series = cells[values_key]
            rows = []
            for t in range(first, last, size):
                numbers = series.get(t, zero)
                rows.append({"t": t, **dict(zip(counters, numbers, strict=True))})
                for i, n in enumerate(numbers):
                    totals[i] += n
            key = {d: (v if v != "" else None) for d, v in zip(dims, values_key, strict=True)}
            out.append({"key": key, "points": rows})
        return {
            "since": start,
            "until": end,
            "step": step_name(size),
            "by": dims,
            "series": out,
            "totals": dict(zip(counters, totals, strict=True)),
        }

    def _rows(self, app_key: str, size: int, first: int, last: int, by_reason: bool) -> list[Any]:
        """Stored rows of the range at ``size`` granularity, then the unflushed minutes."""
        dims = "t, platform, channel, type, app_version"
        if by_reason:
            table, values = _REASON_TABLES[size], "state, reason, n"
        else:
            table, values = _TABLES[size], ", ".join(COUNTERS)
        rows: list[Any] = list(
            self._conn.execute(
                f"SELECT {dims}, {values} FROM {table} WHERE app_key = ? AND t >= ? AND t < ?",
                (app_key, first, last),
            )
        )
        if by_reason:
            rows += [
                (*key[1:], n)
                for key, n in self._reasons.items()
                if key[0] == app_key and first <= key[1] < last
            ]
        else:
            rows += [
                (*key[1:], *numbers)
                for key, numbers in self._counts.items()
                if key[0] == app_key and first <= key[1] < last
            ]
        return rows

    # --- funnels: from the deliveries, exact ------------------------------------------------

    def message_funnel(self, app_key: str, msg_id: str) -> dict[str, Any]:
        """``GET /api/v1/messages/{msg_id}/funnel``."""
        found = self._conn.execute(
            "SELECT 1 FROM messages WHERE msg_id = ? AND app_key = ?", (msg_id, app_key)
        ).fetchone()
        if found is None:
            raise NotFound(f"no message {msg_id!r} in this app", code="unknown_message")
        return {"msg_id": msg_id, **self._funnel(msg_id)}

    def task_funnel(self, app_key: str, task_id: str) -> dict[str, Any]:
        """``GET /api/v1/tasks/{task_id}/funnel``: the funnel of the task's message."""
        row = self._conn.execute(
            "SELECT msg_id FROM tasks WHERE task_id = ? AND app_key = ?", (task_id, app_key)
        ).fetchone()
        if row is None:
            raise NotFound(f"no task {task_id!r} in this app", code="unknown_task")
        return {"task_id": task_id, "msg_id": row[0], **self._funnel(str(row[0]))}

    def _funnel(self, msg_id: str) -> dict[str, Any]:
        states = {
            str(state): int(n)
            for state, n in self._conn.execute(
                "SELECT state, count(*) FROM deliveries WHERE msg_id = ? GROUP BY state", (msg_id,)
            )
        }
        carried = {
            str(state): int(n)
            for state, n in self._conn.execute(
                "SELECT state, count(DISTINCT device_id) FROM delivery_events"
                " WHERE msg_id = ? AND state IN ('published', 'forwarded') GROUP BY state",
                (msg_id,),
            )
        }
        targeted = sum(states.values())
        arrived = sum(states.get(s, 0) for s in ("arrived", "opened", "dismissed"))
        opened = states.get("opened", 0)
        return {
            "targeted": targeted,
            "published": carried.get("published", 0),
            "forwarded": carried.get("forwarded", 0),
            "arrived": arrived,
            "opened": opened,
            "dismissed": states.get("dismissed", 0),
            "failed": states.get("failed", 0),
            "expired": states.get("expired", 0),
            "dropped": states.get("dropped", 0),
            "cancelled": states.get("cancelled", 0),
            "pending": sum(states.get(s, 0) for s in ("accepted", "queued", "published", "forwarded")),
            "arrival_rate": rate(arrived, targeted),
            "open_rate": rate(opened, arrived),
        }

    # --- monthly report -----------------------------------------------------------------------

    def month_report(self, month: str) -> list[dict[str, Any]]:
        """Per app: the month's totals, per-day series, totals by platform and by channel, and
        its rates (``mqttpush report``; reads only what was flushed)."""
        start, end = month_range(month)
        apps = self._conn.execute("SELECT app_key, name FROM apps ORDER BY created_at").fetchall()
        out = []
        for app_key, name in apps:
            days = self.query(app_key, start, end, None, "1d")
            totals = days["totals"]
            out.append(
                {
                    "app_key": app_key,
                    "name": name,
                    "month": month.strip(),
                    "since": start,
                    "until": end,
                    "totals": totals,
                    "rates": {
                        "arrival_rate": rate(totals["arrived"], totals["targeted"]),
                        "open_rate": rate(totals["opened"], totals["arrived"]),
                    },
                    "days": days["series"][0]["points"],
                    "by_platform": _totals_by(self.query(app_key, start, end, "platform", "1d")),
                    "by_channel": _totals_by(self.query(app_key, start, end, "channel", "1d")),
                }
            )
        return out


def _totals_by(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per series: its key's value and the sums of its points."""
    out = []
    for series in doc["series"]:
        (value,) = series["key"].values()
        sums = {c: sum(p[c] for p in series["points"]) for c in COUNTERS}
        out.append({"value": value, **sums})
    return out


def _roll(counts: dict[Key, list[int]], size: int) -> dict[Key, list[int]]:
    if size == 60:
        return counts
    out: dict[Key, list[int]] = {}
    for (app_key, minute, platform, channel, kind, version), values in counts.items():
        key: Key = (app_key, minute // size * size, platform, channel, kind, version)
        cell = out.get(key)
        if cell is None:
            out[key] = list(values)
        else:
            for i, n in enumerate(values):
                cell[i] += n
    return out


def _roll_reasons(reasons: dict[ReasonKey, int], size: int) -> dict[ReasonKey, int]:
    if size == 60:
        return reasons
    out: dict[ReasonKey, int] = {}
    for (app_key, minute, platform, channel, kind, version, state, reason), n in reasons.items():
        key: ReasonKey = (app_key, minute // size * size, platform, channel, kind, version, state, reason)
        out[key] = out.get(key, 0) + n
    return out


def _merge(into: dict[Key, list[int]], counts: dict[Key, list[int]]) -> None:
    for key, values in counts.items():
        cell = into.get(key)
        if cell is None:
            into[key] = values
        else:
            for i, n in enumerate(values):
                cell[i] += n


def _trim(cache: dict[Any, Any], limit: int) -> None:
    """Forget the oldest entries (insertion order) down to 90 % of ``limit``, so that trimming
    (a pass over the keys) is rare."""
    excess = len(cache) - max(0, limit * 9 // 10)
    if excess <= 0:
        return
    for key in list(cache)[:excess]:
        del cache[key]
