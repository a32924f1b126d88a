"""Issue 18 item 2 at the pure level: request JSON, the envelope, signed headers and the MQTT
publish API refuse with a stable code whatever they are given, and what mqttpush encodes is JSON
every parser reads (no NaN or Infinity, no lone surrogates)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.mqtt_api import parse_request
from mqttpush import signing
from mqttpush.envelope import Envelope
from mqttpush.errors import AuthError, BadRequest, InvalidContent, MqttPushError, PayloadTooLarge
from mqttpush.models import (
    DAILY_CAP_MAX,
    LATEST_TIME,
    AppSettings,
    PushRequest,
    check_json_values,
    parse_json_object,
    validate_request,
)

PROPS = settings(max_examples=300, deadline=None)
NOW = 1_700_000_000.0
NONCE = "abcdefghijklmnop_-0123"

# Text as Python's json reads it: any code point, lone surrogates included.
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=8)
any_float = st.floats(allow_nan=True, allow_infinity=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | any_float | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)


def _strict_loads(raw: bytes) -> Any:
    def refuse(token: str) -> Any:
        raise AssertionError(f"{token} in encoded JSON")

    return json.loads(raw.decode("utf-8"), parse_constant=refuse)


def _encodable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode()
    except ValueError:
        return False
    return True


# --- signing.check_headers ---------------------------------------------------------------------------


@PROPS
@given(
    timestamp=st.text(max_size=40) | st.from_regex(r"[0-9]{1,500}", fullmatch=True), now=st.floats(0, 1e12)
)
def test_check_headers_refuses_any_timestamp_with_auth_error_only(timestamp: str, now: float) -> None:
    try:
        signing.check_headers(timestamp, NONCE, "00", now)
    except AuthError as exc:
        assert exc.code in ("missing_signature", "stale_timestamp")
        return
    assert timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 20
    assert abs(now - int(timestamp)) <= signing.WINDOW_SECONDS


@PROPS
@given(offset=st.integers(-(10**500), 10**500))
def test_check_headers_never_overflows_on_a_huge_timestamp(offset: int) -> None:
    timestamp = str(abs(int(NOW) + offset))
    fresh = abs(int(timestamp) - int(NOW)) <= signing.WINDOW_SECONDS
    if fresh:
        signing.check_headers(timestamp, NONCE, "00", NOW)
    else:
        with pytest.raises(AuthError) as info:
            signing.check_headers(timestamp, NONCE, "00", NOW)
        assert info.value.code == "stale_timestamp"


def test_the_overflow_of_issue_18() -> None:
    with pytest.raises(AuthError) as info:
        signing.check_headers("1" + "0" * 400, NONCE, "00", NOW)
    assert info.value.code == "stale_timestamp"


# --- the envelope ------------------------------------------------------------------------------------


def _envelope(data: dict[str, Any], title: str | None = "t") -> Envelope:
    return Envelope("m1", "app", "notification", title, None, data, NOW, NOW + 60)


@PROPS
@given(data=st.dictionaries(any_text, json_values, max_size=4), title=st.none() | any_text)
def test_an_envelope_encodes_to_json_every_parser_reads_or_refuses(
    data: dict[str, Any], title: str | None
) -> None:
    try:
        raw = _envelope(data, title).encode(1 << 20)
    except MqttPushError as exc:
        assert isinstance(exc, InvalidContent | PayloadTooLarge)
        assert exc.code in ("invalid_json_number", "invalid_unicode", "envelope_too_large")
        assert not _encodable({"data": data, "title": title}) or exc.code == "envelope_too_large"
        return
    assert _strict_loads(raw)["title"] == title


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({"v": math.nan}, "invalid_json_number"),
        ({"v": [math.inf]}, "invalid_json_number"),
        ({"v": -math.inf}, "invalid_json_number"),
        ({"\ud800": 1}, "invalid_unicode"),
        ({"v": "a\udfffb"}, "invalid_unicode"),
    ],
)
def test_an_envelope_never_carries_nan_or_a_lone_surrogate(data: dict[str, Any], code: str) -> None:
    with pytest.raises(InvalidContent) as info:
        _envelope(data).encode()
    assert info.value.code == code


# --- request JSON ------------------------------------------------------------------------------------


@PROPS
@given(value=json_values)
def test_check_json_values_refuses_exactly_what_cannot_be_encoded(value: Any) -> None:
    try:
        check_json_values(value)
    except InvalidContent as exc:
        assert exc.code in ("invalid_json_number", "invalid_unicode")
        assert not _encodable(value)
        exc.message.encode()  # the message itself is sendable
        return
    assert _encodable(value)


@PROPS
@given(raw=st.binary(max_size=64) | json_values.map(lambda v: json.dumps({"k": v}).encode()))
def test_parse_json_object_answers_any_bytes_with_a_dict_or_a_refusal(raw: bytes) -> None:
    try:
        obj = parse_json_object(raw)
    except (BadRequest, InvalidContent) as exc:
        assert exc.code in ("malformed_json", "invalid_json_number", "invalid_unicode")
        return
    assert isinstance(obj, dict) and _encodable(obj)


def test_deep_nesting_is_malformed_not_a_crash() -> None:
    with pytest.raises(BadRequest):
        parse_json_object(b"[" * 100_000 + b"]" * 100_000)
    deep = b'{"a": ' * 500 + b"NaN" + b"}" * 500
    with pytest.raises(InvalidContent) as info:
        parse_json_object(deep)
    assert info.value.code == "invalid_json_number"


# --- policy bounds -----------------------------------------------------------------------------------


def _push(policy: dict[str, Any]) -> dict[str, Any]:
    return {"target": {"devices": ["d1"]}, "notification": {"title": "t"}, "policy": policy}


@PROPS
@given(start_at=st.floats(allow_nan=False) | st.integers(-(10**40), 10**40))
def test_start_at_is_within_its_bound_or_refused(start_at: float) -> None:
    try:
        req = validate_request(PushRequest, _push({"start_at": start_at}))
    except InvalidContent as exc:
        assert exc.code in ("bad_policy", "invalid_request")
        assert not 0 < start_at <= LATEST_TIME
        return
    assert req.policy.start_at is not None and 0 < req.policy.start_at <= LATEST_TIME


@PROPS
@given(cap=st.integers(-(10**40), 10**40))
def test_daily_cap_is_within_its_bound_or_refused(cap: int) -> None:
    for model, obj in ((PushRequest, _push({"daily_cap": cap})), (AppSettings, {"daily_cap": cap})):
        try:
            validate_request(model, obj)
        except InvalidContent as exc:
            assert exc.code == "bad_policy"
            assert not 1 <= cap <= DAILY_CAP_MAX
            continue
        assert 1 <= cap <= DAILY_CAP_MAX


@pytest.mark.parametrize(
    ("policy", "code"),
    [
        ({"pace": {"per_second": 1e-9}}, "bad_policy"),
        ({"pace": {"over_minutes": 1e9}}, "bad_policy"),
        ({"repush": {"after": 1e12, "max": 2}}, "bad_policy"),
        ({"schedule": {"daily": "09:00", "until": -1}}, "bad_schedule"),
        ({"schedule": {"daily": "09:00", "count": 10_001}}, "bad_schedule"),
        ({"priority": "urgent"}, "invalid_request"),
        ({"ttl": 0}, "invalid_request"),
    ],
)
def test_policy_refusal_codes(policy: dict[str, Any], code: str) -> None:
    with pytest.raises(InvalidContent) as info:
        validate_request(PushRequest, _push(policy))
    assert info.value.code == code


def test_shapes_stay_for_bridge_policy_to_refuse() -> None:
    """Only numbers are bounded here: a pace or repush of the wrong shape passes to bridge/policy.py,
    whose ``bad_policy`` message says what the shape should be."""
    for policy in ({"pace": {"per_minute": 5}}, {"pace": {"per_second": "x"}}, {"repush": {"after": True}}):
        validate_request(PushRequest, _push(policy))


# --- the MQTT publish API ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b'{"request_id": "r1", "target": {"devices": ["d1"]}, "data": {"v": NaN}}', "invalid_json_number"),
        (b'{"request_id": "r1", "target": {"devices": ["d1"]}, "data": {"v": 1e999}}', "invalid_json_number"),
        (b'{"request_id": "r1", "target": {"devices": ["d1"]}, "data": {"\\ud800": 1}}', "invalid_unicode"),
        (b'{"request_id": "r1", "target": {"devices": ["d1"]}, "policy": {"daily_cap": 0}}', "bad_policy"),
        (b'{"request_id": "r1", "target": {"devices": ["d1"]}, "policy": {"ttl": "x"}}', "invalid_request"),
    ],
)
def test_the_mqtt_api_answers_bad_values_with_their_code(payload: bytes, code: str) -> None:
    request_id, request = parse_request(payload)
    assert request_id == "r1"
    assert isinstance(request, MqttPushError) and request.code == code


@PROPS
@given(value=json_values)
def test_the_mqtt_api_answers_or_drops_any_request(value: Any) -> None:
    raw = json.dumps({"request_id": "r1", "target": {"devices": ["d1"]}, "data": {"v": value}}).encode()
    request_id, request = parse_request(raw)
    assert request_id == "r1"
    if isinstance(request, MqttPushError):
        assert request.code in ("invalid_json_number", "invalid_unicode")
        assert not _encodable(value)
    else:
        assert _encodable(request.model_dump())
