"""What every channel shares: ``Retry-After`` (RFC 9110 §10.2.3), JSON answers and config errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.channels import apns, fcm, hms, mipush, webpush
from bridge.channels.base import MAX_RETRY_AFTER, config_error, json_object, retry_after
from mqttpush.errors import InvalidContent

SENT = datetime(2026, 10, 21, 7, 28, 0, tzinfo=UTC)
IMF = "Wed, 21 Oct 2026 07:28:00 GMT"


def test_every_channel_uses_the_one_retry_after() -> None:
    for module in (apns, fcm, hms, mipush, webpush):
        assert getattr(module, "retry_after", retry_after) is retry_after


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "120"}, 120.0),
        ({"retry-after": " 7 "}, 7.0),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "007"}, 7.0),
        ({"retry-after": "-5"}, None),
        ({"retry-after": "1.5"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "²"}, None),  # a Unicode digit is not a DIGIT
        ({"retry-after": "99999999999999999999"}, MAX_RETRY_AFTER),
        ({"retry-after": "9" * 5000}, MAX_RETRY_AFTER),
        # HTTP-date, in all three forms RFC 9110 asks recipients to read, measured against Date
        ({"retry-after": "Wed, 21 Oct 2026 07:28:30 GMT", "date": IMF}, 30.0),
        ({"retry-after": "Wednesday, 21-Oct-26 07:29:00 GMT", "date": IMF}, 60.0),
        ({"retry-after": "Wed Oct 21 07:28:10 2026", "date": IMF}, 10.0),
        ({"retry-after": "Wed, 21 Oct 2026 07:27:00 GMT", "date": IMF}, 0.0),  # in the past
        ({"retry-after": "Thu, 22 Oct 2026 07:28:00 GMT", "date": IMF}, MAX_RETRY_AFTER),
        ({"retry-after": "Wed, 21 Oct 2026 07:28:30 GMT"}, None),  # no Date to measure from
        ({"retry-after": "Wed, 21 Oct 2026 07:28:30 GMT", "date": "yesterday"}, None),
        ({"retry-after": "Wed, 21 Oct 99999 07:28:30 GMT", "date": IMF}, None),
    ],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after(headers) == expected


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(["retry-after", "date", "other"]), st.text(max_size=40)))
def test_retry_after_never_raises_and_stays_in_bounds(headers: dict[str, str]) -> None:
    after = retry_after(headers)
    assert after is None or 0.0 <= after <= MAX_RETRY_AFTER


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=10**12))
def test_delay_seconds_are_taken_as_they_are_up_to_the_bound(seconds: int) -> None:
    assert retry_after({"retry-after": str(seconds)}) == min(float(seconds), MAX_RETRY_AFTER)


@settings(max_examples=200)
@given(
    sent=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1)),
    delta=st.integers(min_value=-(10**6), max_value=10**6),
)
def test_an_http_date_is_measured_against_the_date_header(sent: datetime, delta: int) -> None:
    sent = sent.replace(microsecond=0, tzinfo=UTC)
    when = sent + timedelta(seconds=delta)
    headers = {"retry-after": format_datetime(when, usegmt=True), "date": format_datetime(sent, usegmt=True)}
    assert retry_after(headers) == min(max(0.0, float(delta)), MAX_RETRY_AFTER)


@pytest.mark.parametrize("body", [b"", b"[]", b"null", b"\xff", b"{", b"[" * 100_000])
def test_json_object_is_none_for_anything_but_an_object(body: bytes) -> None:
    assert json_object(body) is None


def test_config_errors_name_the_file_and_the_vendor() -> None:
    error = config_error("apns", "team_id is required")
    assert isinstance(error, InvalidContent)
    assert (error.code, error.message) == ("bad_vendor_config", "VENDORS.json apns: team_id is required")
