"""Delivery policy decisions, pure: schedules (cron, daily, weekly, in a time zone), quiet hours,
daily caps and pacing. Everything takes the time as an argument; nothing here reads a clock."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from mqttpush.clock import zone
from mqttpush.errors import InvalidContent

_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_HHMM = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


def _bad(message: str, code: str = "bad_policy") -> InvalidContent:
    return InvalidContent(message, code=code)


def parse_hhmm(text: Any, what: str) -> int:
    """Minutes after midnight of ``"HH:MM"``."""
    m = _HHMM.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise _bad(f"{what} must be HH:MM, not {text!r}")
    return int(m.group(1)) * 60 + int(m.group(2))


# --- cron ---------------------------------------------------------------------------------------

_FIELDS = (
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)


def _cron_field(text: str, name: str, low: int, high: int, names: list[str] | None) -> frozenset[int]:
    values: set[int] = set()
    for part in text.lower().split(","):
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise _bad(f"cron {name}: bad step {part!r}", "bad_schedule")
            step = int(step_text)

        def num(token: str) -> int:
            if names and token in names:
                return names.index(token) + (1 if names is _MONTHS else 0)
            if not token.isdigit():
                raise _bad(f"cron {name}: {token!r} is not a number", "bad_schedule")
            return int(token)

        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = num(a), num(b)
        else:
            start = end = num(base)
            if step_text:
                end = high
        if not (low <= start <= high and low <= end <= high and start <= end):
            raise _bad(f"cron {name}: {part!r} is outside {low}-{high}", "bad_schedule")
        values.update(range(start, end + 1, step))
    if names is _DAYS and 7 in values:  # 7 is Sunday too
        values = (values - {7}) | {0}
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, text: str) -> Cron:
        parts = text.split()
        if len(parts) != 5:
            raise _bad(
                f"cron needs 5 fields (minute hour day month weekday), got {len(parts)}", "bad_schedule"
            )
        m, h, dom, mon, dow = (_cron_field(p, *spec) for p, spec in zip(parts, _FIELDS, strict=True))
        return cls(m, h, dom, mon, dow, any_day=parts[2] == "*", any_weekday=parts[4] == "*")

    def _day_ok(self, d: datetime) -> bool:
        dom = d.day in self.days
        dow = (d.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:  # Vixie cron: restricted day fields are OR-ed
            return dom and dow
        return dom or dow

    def next_after(self, local: datetime) -> datetime | None:
        """The first matching local minute strictly after ``local`` (within ~4 years), or None."""
        t = local.replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = t + timedelta(days=366 * 4)
        while t < limit:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
                continue
            if not self._day_ok(t):
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
                continue
            if t.hour not in self.hours:
                t = t.replace(minute=0) + timedelta(hours=1)
                continue
            if t.minute not in self.minutes:
                t += timedelta(minutes=1)
                continue
            return t
        return None


# --- schedules ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Schedule:
    """A recurring send: ``{"cron": "0 9 * * mon"}``, ``{"daily": "09:00"}`` or
    ``{"weekly": {"days": ["mon", "thu"], "at": "09:00"}}``, each with an optional ``"tz"``
    (IANA, default UTC), ``"until"`` (unix seconds) and ``"count"`` (occurrences)."""

    cron: Cron
    tz: str
    until: float | None
    count: int | None

    @classmethod
    def parse(cls, obj: Any) -> Schedule:
        if not isinstance(obj, dict):
            raise _bad("policy.schedule must be an object", "bad_schedule")
        kinds = [k for k in ("cron", "daily", "weekly") if k in obj]
        if len(kinds) != 1:
            raise _bad("policy.schedule needs exactly one of cron, daily, weekly", "bad_schedule")
        unknown = set(obj) - {"cron", "daily", "weekly", "tz", "until", "count"}
        if unknown:
            raise _bad(f"policy.schedule: unknown key {sorted(unknown)[0]!r}", "bad_schedule")
        tz = obj.get("tz") or "UTC"
        zone(tz)
        if kinds == ["cron"]:
            if not isinstance(obj["cron"], str):
                raise _bad("policy.schedule.cron must be a string", "bad_schedule")
            cron = Cron.parse(obj["cron"])
        elif kinds == ["daily"]:
            minute = parse_hhmm(obj["daily"], "policy.schedule.daily")
            cron = Cron.parse(f"{minute % 60} {minute // 60} * * *")
        else:
            weekly = obj["weekly"]
            if not isinstance(weekly, dict) or not isinstance(weekly.get("days"), list) or not weekly["days"]:
                raise _bad(
                    'policy.schedule.weekly must be {"days": ["mon", ...], "at": "HH:MM"}', "bad_schedule"
                )
            days = [str(d).lower()[:3] for d in weekly["days"]]
            if any(d not in _DAYS for d in days):
                raise _bad(f"policy.schedule.weekly.days: use mon..sun, not {weekly['days']}", "bad_schedule")
            minute = parse_hhmm(weekly.get("at"), "policy.schedule.weekly.at")
            cron = Cron.parse(f"{minute % 60} {minute // 60} * * {','.join(days)}")
        until, count = obj.get("until"), obj.get("count")
        if until is not None and not isinstance(until, int | float):
            raise _bad("policy.schedule.until must be unix seconds", "bad_schedule")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise _bad("policy.schedule.count must be a positive integer", "bad_schedule")
        return cls(cron, tz, until, count)

    def next_after(self, t: float, done: int = 0) -> float | None:
        """Unix time of the next occurrence after ``t`` (``done`` occurrences so far), or None."""
        if self.count is not None and done >= self.count:
            return None
        tz = zone(self.tz)
        # Walk wall-clock minutes; in the hour a DST fall-back repeats, one wall time is two
        # instants, so take the first one after ``t`` (arithmetic on aware times drops the fold).
        local = datetime.fromtimestamp(t, tz).replace(tzinfo=None)
        while (nxt := self.cron.next_after(local)) is not None:
            when = instant_after(nxt, tz, t)
            if when is not None:
                return None if self.until is not None and when > self.until else when
            local = nxt
        return None


# --- quiet hours and caps -----------------------------------------------------------------------


def instant_after(wall: datetime, tz: ZoneInfo, t: float) -> float | None:
    """The first instant after ``t`` at which clocks in ``tz`` show ``wall`` (naive or aware;
    two candidates in a repeated hour, one elsewhere; a time in a skipped hour maps past it)."""
    wall = wall.replace(tzinfo=None)
    first, second = (wall.replace(tzinfo=tz, fold=f).timestamp() for f in (0, 1))
    # In a gap fold=1 reads the wall time with the offset after the jump (an instant before it):
    # only fold=0, which lands as far past the gap as the wall time was into it, is meant.
    later = [w for w in ((first, second) if first <= second else (first,)) if w > t]
    return min(later) if later else None


@dataclass(frozen=True, slots=True)
class QuietHours:
    start: int  # minutes after local midnight
    end: int

    @classmethod
    def parse(cls, obj: Any) -> QuietHours:
        if not isinstance(obj, dict) or set(obj) != {"start", "end"}:
            raise _bad('quiet_hours must be {"start": "HH:MM", "end": "HH:MM"}')
        q = cls(parse_hhmm(obj["start"], "quiet_hours.start"), parse_hhmm(obj["end"], "quiet_hours.end"))
        if q.start == q.end:
            raise _bad("quiet_hours start and end must differ")
        return q

    def ends_at(self, local: datetime) -> datetime | None:
        """When the quiet window that ``local`` is in ends, or None if ``local`` is not quiet."""
        minute = local.hour * 60 + local.minute
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.start < self.end:
            quiet = self.start <= minute < self.end
            end = midnight + timedelta(minutes=self.end)
        else:  # across midnight, e.g. 22:00-08:00
            quiet = minute >= self.start or minute < self.end
            end = midnight + timedelta(minutes=self.end, days=1 if minute >= self.start else 0)
        return end if quiet else None


@dataclass(frozen=True, slots=True)
class DeviceGate:
    """What quiet hours and a daily cap say about one device now."""

    action: str  # send | hold | drop
    until: float | None = None
    reason: str | None = None


def gate(
    now: float,
    tz: str | None,
    quiet: QuietHours | None,
    daily_cap: int | None,
    sent_today: int,
    over_cap: str = "hold",
) -> DeviceGate:
    """Decide for one device: send now, hold until a time, or drop (``capped``)."""
    try:
        tzinfo = zone(tz)
    except InvalidContent:
        tzinfo = zone(None)
    local = datetime.fromtimestamp(now, tzinfo)
    if daily_cap is not None and sent_today >= daily_cap:
        if over_cap == "drop":
            return DeviceGate("drop", reason="capped")
        tomorrow = local.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        return gate_later(tomorrow, quiet, "capped", now, tzinfo)
    if quiet is not None:
        end = quiet.ends_at(local)
        if end is not None:
            return DeviceGate("hold", until=instant_after(end, tzinfo, now) or now, reason="quiet_hours")
    return DeviceGate("send")


def gate_later(
    local: datetime, quiet: QuietHours | None, reason: str, now: float, tz: ZoneInfo
) -> DeviceGate:
    """Hold until ``local`` (wall time in ``tz``), or past the quiet window it falls in."""
    end = quiet.ends_at(local) if quiet is not None else None
    return DeviceGate("hold", until=instant_after(end or local, tz, now) or now, reason=reason)


def local_midnight(now: float, tz: str | None) -> float:
    """Unix time of the start of the device's local day containing ``now``."""
    try:
        tzinfo = zone(tz)
    except InvalidContent:
        tzinfo = zone(None)
    local = datetime.fromtimestamp(now, tzinfo)
    return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


@dataclass(frozen=True, slots=True)
class Pace:
    """Spread a send: at most ``per_second``, or evenly over ``over_seconds``."""

    per_second: float | None = None
    over_seconds: float | None = None

    @classmethod
    def parse(cls, obj: Any) -> Pace:
        if not isinstance(obj, dict) or len(obj) != 1:
            raise _bad('policy.pace must be {"per_second": R} or {"over_minutes": N}')
        ((key, value),) = obj.items()
        if (
            key not in ("per_second", "over_minutes")
            or not isinstance(value, int | float)
            or value <= 0
            or isinstance(value, bool)
        ):
            raise _bad('policy.pace must be {"per_second": R} or {"over_minutes": N} with a positive number')
        return cls(per_second=float(value)) if key == "per_second" else cls(over_seconds=float(value) * 60)

    def rate(self, total: int) -> float:
        """Deliveries per second for a send of ``total`` deliveries."""
        if self.per_second is not None:
            return self.per_second
        assert self.over_seconds is not None
        return max(total, 1) / self.over_seconds


@dataclass(frozen=True, slots=True)
class SendPolicy:
    """Everything that decides *when* each delivery of a message goes out."""

    priority: int = 1  # 0 high, 1 normal: high sends overtake normal ones in every queue
    quiet: QuietHours | None = None
    daily_cap: int | None = None
    over_cap: str = "hold"
    pace: Pace | None = None
    repush_after: float | None = None
    repush_max: int = 0
    inbox_limit: int = 1000
    strategy: str | None = None
    """mqtt | mqtt_else_vendor (default) | vendor_first | vendor (bridge/router.py)."""
    ttl: int | None = None

    @property
    def gated(self) -> bool:
        return self.quiet is not None or self.daily_cap is not None

    @classmethod
    def of(cls, policy: dict[str, Any], settings: dict[str, Any]) -> SendPolicy:
        """The message's policy over its app's settings; raises 422 ``bad_policy`` on nonsense."""
        quiet_obj = policy.get("quiet_hours")
        if quiet_obj is None:
            quiet_obj = settings.get("quiet_hours")
        quiet = QuietHours.parse(quiet_obj) if isinstance(quiet_obj, dict) else None
        if quiet_obj is not None and not isinstance(quiet_obj, dict | bool):
            raise _bad('quiet_hours must be {"start": "HH:MM", "end": "HH:MM"} or false')
        if quiet_obj is True:
            raise _bad("quiet_hours: true needs the hours; give them, or false to ignore the app's")
        cap = policy.get("daily_cap") if policy.get("daily_cap") is not None else settings.get("daily_cap")
        repush = policy.get("repush")
        after, most = None, 0
        if repush is not None:
            if not isinstance(repush, dict) or set(repush) - {"after", "max"}:
                raise _bad('policy.repush must be {"after": SECONDS, "max": K}')
            after, most = repush.get("after"), repush.get("max", 1)
            if not isinstance(after, int | float) or isinstance(after, bool) or after <= 0:
                raise _bad("policy.repush.after must be a positive number of seconds")
            if not isinstance(most, int) or isinstance(most, bool) or not 1 <= most <= 10:
                raise _bad("policy.repush.max must be 1-10")
        return cls(
            priority=0 if policy.get("priority") == "high" else 1,
            quiet=quiet,
            daily_cap=cap,
            over_cap=policy.get("over_cap") or settings.get("over_cap") or "hold",
            pace=Pace.parse(policy["pace"]) if policy.get("pace") is not None else None,
            repush_after=float(after) if after is not None else None,
            repush_max=most,
            inbox_limit=int(settings.get("inbox_limit") or 1000),
            strategy=policy.get("strategy"),
            ttl=policy.get("ttl"),
        )
