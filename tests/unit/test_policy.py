"""Delivery policy decisions (bridge/policy.py), pure: schedules, quiet hours, daily caps, pacing.

Properties are checked against small reference definitions written here, not against the
module's own parsed sets, so a parser and a search that agree on a wrong answer still fail.
"""

from __future__ import annotations

import bisect
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.policy import Cron, DeviceGate, Pace, QuietHours, Schedule, gate, local_midnight, parse_hhmm
from mqttpush.clock import zone
from mqttpush.errors import InvalidContent

MINUTE = timedelta(minutes=1)
# Zones whose DST changes happen between 01:00 and 03:59 local time, never at midnight.
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Kolkata"]
NO_DST = ["UTC", "Asia/Kolkata", "Asia/Tokyo"]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


class _Raises:
    """``with _Raises("bad_schedule"):`` — an InvalidContent with that stable code."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        assert isinstance(exc, InvalidContent), f"expected InvalidContent({self.code}), got {exc!r}"
        assert exc.code == self.code and exc.message, (exc.code, exc.message)
        return True


# --- cron -----------------------------------------------------------------------------------------


def field(values: frozenset[int] | None) -> str:
    return "*" if values is None else ",".join(str(v) for v in sorted(values))


def subset(low: int, high: int) -> st.SearchStrategy[frozenset[int] | None]:
    return st.one_of(st.none(), st.frozensets(st.integers(low, high), min_size=1, max_size=4))


cron_specs = st.tuples(
    subset(0, 59), subset(0, 23), subset(1, 31), st.one_of(st.none(), subset(1, 12)), subset(0, 6)
)
local_times = st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2090, 1, 1))


def matches(t: datetime, spec: tuple[frozenset[int] | None, ...]) -> bool:
    """Vixie cron: every field matches; day of month and day of week are OR-ed when both are given."""
    minutes, hours, days, months, weekdays = spec
    dom = days is None or t.day in days
    dow = weekdays is None or t.isoweekday() % 7 in weekdays
    day_ok = (dom or dow) if days is not None and weekdays is not None else (dom and dow)
    return (
        (minutes is None or t.minute in minutes)
        and (hours is None or t.hour in hours)
        and (months is None or t.month in months)
        and day_ok
    )


def cron_text(spec: tuple[frozenset[int] | None, ...]) -> str:
    return " ".join(field(v) for v in spec)


@settings(max_examples=150, deadline=None)
@given(spec=cron_specs, local=local_times)
def test_cron_next_is_strictly_after_matches_and_is_the_first(
    spec: tuple[frozenset[int] | None, ...], local: datetime
) -> None:
    nxt = Cron.parse(cron_text(spec)).next_after(local)
    if nxt is None:  # only for dates that never come (31 February) within the search horizon
        assert spec[2] is not None and spec[3] is not None and min(spec[2]) >= 30
        return
    assert nxt > local and nxt.second == 0 and nxt.microsecond == 0
    assert matches(nxt, spec)
    if nxt - local <= timedelta(days=2):  # nothing matching is skipped on the way
        t = local.replace(second=0, microsecond=0) + MINUTE
        while t < nxt:
            assert not matches(t, spec), t
            t += MINUTE


@settings(max_examples=150, deadline=None)
@given(spec=cron_specs, a=local_times, b=local_times)
def test_cron_next_is_monotonic(spec: tuple[frozenset[int] | None, ...], a: datetime, b: datetime) -> None:
    cron = Cron.parse(cron_text(spec))
    early, late = sorted((a, b))
    na, nb = cron.next_after(early), cron.next_after(late)
    if na is not None and nb is not None:
        assert na <= nb
        assert nb == na or late >= na  # a later start skips the earlier fire time only once it passed


@pytest.mark.parametrize(
    ("text", "local", "expected"),
    [
        ("0 9 * * mon-fri", datetime(2026, 3, 6, 9, 0), datetime(2026, 3, 9, 9, 0)),  # Friday → Monday
        ("*/15 * * * *", datetime(2026, 1, 1, 10, 7, 30), datetime(2026, 1, 1, 10, 15)),
        ("30 8 1 jan *", datetime(2026, 1, 1, 8, 30), datetime(2027, 1, 1, 8, 30)),
        ("0 0 * * 7", datetime(2026, 3, 2), datetime(2026, 3, 8)),  # 7 is Sunday too
        ("0 12 13 * fri", datetime(2026, 2, 1), datetime(2026, 2, 6, 12, 0)),  # day OR weekday
        ("0 0 29 2 *", datetime(2026, 3, 1), datetime(2028, 2, 29)),
        ("5-10/5 1 * * *", datetime(2026, 1, 1, 1, 5), datetime(2026, 1, 1, 1, 10)),
        ("0 0 30 2 *", datetime(2026, 1, 1), None),  # never
    ],
)
def test_cron_examples(text: str, local: datetime, expected: datetime | None) -> None:
    assert Cron.parse(text).next_after(local) == expected


@pytest.mark.parametrize(
    "text",
    ["", "* * * *", "* * * * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *", "* * * * 8",
     "*/0 * * * *", "a * * * *", "5-1 * * * *", "* * * foo *", "1-2-3 * * * *"],
)  # fmt: skip
def test_cron_refuses_nonsense_with_bad_schedule(text: str) -> None:
    with _Raises("bad_schedule"):
        Cron.parse(text)


# --- schedules in a time zone ---------------------------------------------------------------------

# Whole milliseconds: datetime.fromtimestamp rounds to microseconds, so x.9999995 would be the next second.
instants = st.integers(int(utc(2001, 1, 1)) * 1000, int(utc(2090, 1, 1)) * 1000).map(lambda ms: ms / 1000)


@settings(max_examples=150, deadline=None)
@given(spec=cron_specs, tz=st.sampled_from(NO_DST), t=instants)
def test_schedule_next_is_strictly_after_now_and_matches_in_its_zone(
    spec: tuple[frozenset[int] | None, ...], tz: str, t: float
) -> None:
    schedule = Schedule.parse({"cron": cron_text(spec), "tz": tz})
    nxt = schedule.next_after(t)
    if nxt is not None:
        assert nxt > t
        assert matches(datetime.fromtimestamp(nxt, zone(tz)).replace(tzinfo=None), spec)
        assert schedule.next_after(nxt) is None or schedule.next_after(nxt) > nxt  # type: ignore[operator]


@settings(max_examples=150, deadline=None)
@given(
    at=st.tuples(st.integers(4, 23), st.integers(0, 59)),
    tz=st.sampled_from(ZONES),
    a=instants,
    b=instants,
)
def test_daily_fires_at_its_wall_time_after_now_and_monotonic(
    at: tuple[int, int], tz: str, a: float, b: float
) -> None:
    schedule = Schedule.parse({"daily": f"{at[0]:02d}:{at[1]:02d}", "tz": tz})
    early, late = sorted((a, b))
    na, nb = schedule.next_after(early), schedule.next_after(late)
    assert na is not None and nb is not None
    assert early < na <= nb and late < nb
    assert na - early <= 25 * 3600
    local = datetime.fromtimestamp(na, zone(tz))
    assert (local.hour, local.minute) == at


@settings(max_examples=100, deadline=None)
@given(
    days=st.lists(
        st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]), min_size=1, unique=True
    ),
    tz=st.sampled_from(ZONES),
    t=instants,
)
def test_weekly_fires_on_its_days(days: list[str], tz: str, t: float) -> None:
    nxt = Schedule.parse({"weekly": {"days": days, "at": "09:30"}, "tz": tz}).next_after(t)
    assert nxt is not None and t < nxt <= t + 8 * 86400
    local = datetime.fromtimestamp(nxt, zone(tz))
    assert local.strftime("%a").lower() in days and (local.hour, local.minute) == (9, 30)


def test_count_and_until_end_a_series() -> None:
    t = utc(2026, 1, 1)
    schedule = Schedule.parse({"daily": "09:00", "count": 2, "until": utc(2026, 1, 2, 9)})
    assert schedule.next_after(t, done=0) == utc(2026, 1, 1, 9)
    assert schedule.next_after(utc(2026, 1, 1, 9), done=1) == utc(2026, 1, 2, 9)  # until is inclusive
    assert schedule.next_after(utc(2026, 1, 1, 9), done=2) is None  # count reached
    assert (
        Schedule.parse({"daily": "09:00", "until": utc(2026, 1, 2, 8)}).next_after(utc(2026, 1, 1, 10))
        is None
    )


def test_spring_forward_fires_at_the_shifted_time_after_now() -> None:
    # Europe/Berlin, 29 March 2026: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that day.
    schedule = Schedule.parse({"daily": "02:30", "tz": "Europe/Berlin"})
    t = utc(2026, 3, 29, 0, 0)  # 01:00 CET
    nxt = schedule.next_after(t)
    assert nxt is not None and nxt > t
    assert nxt == utc(2026, 3, 29, 1, 30)  # 03:30 CEST, an hour after 01:30 UTC's wall 02:30 CET would be


def test_fall_back_second_pass_fires_at_the_second_wall_time() -> None:
    schedule = Schedule.parse({"daily": "02:30", "tz": "Europe/Berlin"})
    assert schedule.next_after(utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 25, 1, 30)  # 02:30 CET
    # after firing at 02:30 CEST (first pass) the next is the next day's, not 02:30 CET
    assert schedule.next_after(utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 26, 1, 30)


def test_quiet_hours_ending_in_the_repeated_hour_hold_until_after_now() -> None:
    # Quiet 01:00-02:30 in Berlin; at 02:10 CET (the second pass) the window ends at 02:30 CET,
    # not at 02:30 CEST an hour ago.
    quiet = QuietHours.parse({"start": "01:00", "end": "02:30"})
    now = utc(2026, 10, 25, 1, 10)
    decision = gate(now, "Europe/Berlin", quiet, None, 0)
    assert decision == DeviceGate("hold", until=utc(2026, 10, 25, 1, 30), reason="quiet_hours")


def test_fall_back_first_pass_fires_once_that_day() -> None:
    # Europe/Berlin, 25 October 2026: 03:00 CEST becomes 02:00 CET; 02:xx happens twice.
    schedule = Schedule.parse({"daily": "02:30", "tz": "Europe/Berlin"})
    t = utc(2026, 10, 25, 0, 10)  # 02:10 CEST, the first pass
    assert schedule.next_after(t) == utc(2026, 10, 25, 0, 30)  # 02:30 CEST


@pytest.mark.parametrize("spec", [{"cron": "*/5 * * * *"}, {"daily": "02:30"}])
def test_fall_back_second_pass_is_still_strictly_after_now(spec: dict[str, str]) -> None:
    schedule = Schedule.parse(spec | {"tz": "Europe/Berlin"})
    t = utc(2026, 10, 25, 1, 10)  # 02:10 CET, the second pass
    nxt = schedule.next_after(t)
    assert nxt is not None and nxt > t


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ("daily", "bad_schedule"),
        ({}, "bad_schedule"),
        ({"daily": "09:00", "cron": "* * * * *"}, "bad_schedule"),
        ({"weekly": {"days": [], "at": "09:00"}}, "bad_schedule"),
        ({"weekly": {"days": ["someday"], "at": "09:00"}}, "bad_schedule"),
        ({"cron": 5}, "bad_schedule"),
        ({"daily": "09:00", "count": 0}, "bad_schedule"),
        ({"daily": "09:00", "until": "tomorrow"}, "bad_schedule"),
        ({"daily": "09:00", "every": 2}, "bad_schedule"),
        ({"daily": "9am"}, "bad_policy"),  # the HH:MM reader's code, shared with quiet hours
        ({"daily": "24:00"}, "bad_policy"),
        ({"weekly": {"days": ["mon"]}}, "bad_policy"),
    ],
)
def test_schedule_refuses_nonsense_with_a_stable_code(obj: object, code: str) -> None:
    with _Raises(code):
        Schedule.parse(obj)


def test_schedule_refuses_an_unknown_zone() -> None:
    with _Raises("bad_timezone"):
        Schedule.parse({"daily": "09:00", "tz": "Mars/Olympus"})


# --- quiet hours ----------------------------------------------------------------------------------

windows = st.tuples(st.integers(0, 1439), st.integers(0, 1439)).filter(lambda w: w[0] != w[1])


def inside(minute: int, start: int, end: int) -> bool:
    return start <= minute < end if start < end else minute >= start or minute < end


@settings(max_examples=300)
@given(window=windows, local=local_times)
def test_quiet_window_defers_to_its_end_only_inside(window: tuple[int, int], local: datetime) -> None:
    start, end = window
    quiet = QuietHours(start, end)
    minute = local.hour * 60 + local.minute
    until = quiet.ends_at(local)
    assert (until is not None) == inside(minute, start, end)
    if until is not None:
        assert local < until <= local + timedelta(days=1)
        assert until.hour * 60 + until.minute == end and until.second == 0
        crosses = start > end and minute >= start  # before midnight in a window across midnight
        assert until.date() == local.date() + timedelta(days=1 if crosses else 0)


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        (datetime(2026, 5, 1, 21, 59), None),
        (datetime(2026, 5, 1, 22, 0), datetime(2026, 5, 2, 8, 0)),
        (datetime(2026, 5, 1, 23, 59), datetime(2026, 5, 2, 8, 0)),
        (datetime(2026, 5, 2, 0, 0), datetime(2026, 5, 2, 8, 0)),
        (datetime(2026, 5, 2, 7, 59, 59), datetime(2026, 5, 2, 8, 0)),
        (datetime(2026, 5, 2, 8, 0), None),
    ],
)
def test_quiet_hours_across_midnight(local: datetime, expected: datetime | None) -> None:
    assert QuietHours.parse({"start": "22:00", "end": "08:00"}).ends_at(local) == expected


@settings(max_examples=300)
@given(
    start=st.integers(0, 1439),
    end=st.integers(4 * 60, 1439),  # ends outside the hours DST changes happen in
    tz=st.sampled_from(ZONES),
    now=instants,
)
def test_gate_holds_a_quiet_device_until_the_window_ends_in_its_zone(
    start: int, end: int, tz: str, now: float
) -> None:
    if start == end:
        start = (start + 1) % 1440
    quiet = QuietHours(start, end)
    local = datetime.fromtimestamp(now, zone(tz))
    decision = gate(now, tz, quiet, None, 0)
    if inside(local.hour * 60 + local.minute, start, end):
        assert decision.action == "hold" and decision.reason == "quiet_hours"
        assert decision.until is not None and now < decision.until <= now + 25 * 3600
        ends = datetime.fromtimestamp(decision.until, zone(tz))
        assert ends.hour * 60 + ends.minute == end
        assert gate(decision.until, tz, quiet, None, 0) == DeviceGate("send")  # and then it goes
    else:
        assert decision == DeviceGate("send")


@pytest.mark.parametrize(
    "obj",
    [None, {}, {"start": "22:00"}, {"start": "22:00", "end": "22:00"}, {"start": "22h", "end": "08:00"},
     {"start": "22:00", "end": "08:00", "tz": "UTC"}, {"start": 2200, "end": "08:00"}],
)  # fmt: skip
def test_quiet_hours_refuse_nonsense_with_bad_policy(obj: object) -> None:
    with _Raises("bad_policy"):
        QuietHours.parse(obj)


@given(h=st.integers(0, 23), m=st.integers(0, 59))
def test_parse_hhmm(h: int, m: int) -> None:
    assert parse_hhmm(f"{h:02d}:{m:02d}", "x") == h * 60 + m
    assert parse_hhmm(f"{h}:{m:02d}", "x") == h * 60 + m


# --- daily caps -----------------------------------------------------------------------------------


@settings(max_examples=200)
@given(
    cap=st.integers(1, 20),
    sent=st.integers(0, 40),
    tz=st.sampled_from(ZONES),
    now=instants,
    over_cap=st.sampled_from(["hold", "drop"]),
)
def test_a_daily_cap_holds_until_the_next_local_day_or_drops(
    cap: int, sent: int, tz: str, now: float, over_cap: str
) -> None:
    decision = gate(now, tz, None, cap, sent, over_cap)
    if sent < cap:
        assert decision == DeviceGate("send")
    elif over_cap == "drop":
        assert decision == DeviceGate("drop", reason="capped")
    else:
        assert decision.action == "hold" and decision.reason == "capped" and decision.until is not None
        assert now < decision.until <= now + 25 * 3600
        assert decision.until == local_midnight(decision.until, tz)  # a local midnight
        assert local_midnight(now, tz) < decision.until  # of a later day


def test_a_capped_hold_waits_out_quiet_hours_across_midnight() -> None:
    quiet = QuietHours.parse({"start": "22:00", "end": "07:00"})
    now = utc(2026, 6, 1, 20, 0)  # 22:00 in Berlin (CEST)
    decision = gate(now, "Europe/Berlin", quiet, daily_cap=3, sent_today=3)
    assert decision == DeviceGate("hold", until=utc(2026, 6, 2, 5, 0), reason="capped")  # 07:00 CEST


@settings(max_examples=200)
@given(tz=st.sampled_from(ZONES), now=instants)
def test_local_midnight_starts_the_local_day(tz: str, now: float) -> None:
    midnight = local_midnight(now, tz)
    assert midnight <= now < midnight + 25 * 3600
    local = datetime.fromtimestamp(midnight, zone(tz))
    assert (local.hour, local.minute, local.second) == (0, 0, 0)
    assert local.date() == datetime.fromtimestamp(now, zone(tz)).date()


def test_an_unknown_device_zone_counts_as_utc() -> None:
    now = utc(2026, 1, 1, 12)
    assert local_midnight(now, "Nowhere/Special") == utc(2026, 1, 1)
    assert gate(now, "Nowhere/Special", QuietHours(11 * 60, 13 * 60), None, 0).until == utc(2026, 1, 1, 13)


# --- pacing ---------------------------------------------------------------------------------------


def amounts(smallest: float, largest: int) -> st.SearchStrategy[float]:
    """A pacing amount as a push gives it: a whole number from 1, or a float from ``smallest``."""
    return st.one_of(st.integers(1, largest), st.floats(min_value=smallest, max_value=largest))


def slots(pace: Pace, total: int, now: float) -> list[float]:
    """Publish slots as the dispatcher hands them out: 1/rate apart from now."""
    interval = 1.0 / pace.rate(total)
    return [now + i * interval for i in range(total)]


@settings(max_examples=200)
@given(per_second=amounts(0.01, 5000), total=st.integers(1, 3000))
def test_pacing_per_second_never_exceeds_the_rate(per_second: float, total: int) -> None:
    pace = Pace.parse({"per_second": per_second})
    times = slots(pace, total, 1_800_000_000.0)
    assert times == sorted(times)
    limit = math.ceil(per_second)
    for i, t in enumerate(times):  # in any one-second window starting at a slot
        assert bisect.bisect_left(times, t + 1.0 - 1e-6) - i <= limit


@settings(max_examples=200)
@given(minutes=amounts(0.1, 1440), total=st.integers(0, 100_000))
def test_pacing_over_minutes_ends_within_the_window(minutes: float, total: int) -> None:
    pace = Pace.parse({"over_minutes": minutes})
    now = 1_800_000_000.0
    assert pace.rate(total) > 0
    if total:
        interval = 1.0 / pace.rate(total)
        first, last = now, now + (total - 1) * interval
        assert first == now and last < now + minutes * 60
        assert last + interval == pytest.approx(now + minutes * 60)  # spread over the whole window


@pytest.mark.parametrize(
    "obj",
    [None, {}, {"per_second": 0}, {"per_second": -1}, {"per_second": True}, {"over_minutes": "5"},
     {"per_second": 1, "over_minutes": 1}, {"per_minute": 5}],
)  # fmt: skip
def test_pace_refuses_nonsense_with_bad_policy(obj: object) -> None:
    with _Raises("bad_policy"):
        Pace.parse(obj)
