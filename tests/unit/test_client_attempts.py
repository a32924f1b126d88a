"""The clients' retry decisions without sockets (mqttpush.client.Attempts): answers and transport
errors in, a wait or a typed error out; and the quick form's paths."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqttpush import signing
from mqttpush.client import (
    FIRST_BACKOFF,
    MAX_BACKOFF,
    Attempts,
    Credentials,
    RetryPolicy,
    json_call,
    quick_call,
)
from mqttpush.errors import ClientError

URL = "http://127.0.0.1:9"
SIGNED = Credentials("k", "s")


def _refusal(status: int, code: str, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, headers=headers, json={"error": {"code": code, "message": "m"}})


def _attempts(method: str = "POST", policy: RetryPolicy | None = None, **kwargs: bool) -> Attempts:
    return Attempts(
        json_call(method, "/api/v1/push", {"a": 1}, **kwargs), SIGNED, policy or RetryPolicy(), URL
    )


def test_each_attempt_is_signed_afresh() -> None:
    attempts = _attempts()
    with httpx.Client(base_url=URL) as http:
        first, second = attempts.request(http), attempts.request(http)
    assert first.headers[signing.NONCE_HEADER] != second.headers[signing.NONCE_HEADER]
    assert attempts.attempt == 2


@given(st.integers(min_value=1, max_value=100))
def test_the_backoff_doubles_with_jitter_up_to_its_cap(attempt: int) -> None:
    nominal = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** min(attempt - 1, 16))
    assert nominal / 2 <= RetryPolicy().backoff(attempt) <= nominal


def test_retry_after_is_honoured_within_retries_and_max_wait() -> None:
    attempts = _attempts(policy=RetryPolicy(retries=4, max_wait=60))
    waits = []
    with pytest.raises(ClientError) as gave_up:
        while True:
            attempts.attempt += 1
            waits.append(attempts.after(_refusal(429, "rate_limited", "20")))
    assert waits == [20.0, 20.0, 20.0]  # a fourth wait would pass max_wait
    assert (gave_up.value.code, gave_up.value.status, gave_up.value.retry_after) == (
        "rate_limited",
        429,
        20.0,
    )
    assert "gave up after 4 attempts" in gave_up.value.message

    attempts = _attempts(policy=RetryPolicy(retries=1))
    attempts.attempt = 1
    assert attempts.after(_refusal(503, "overloaded", "0")) == 0.0
    attempts.attempt = 2
    with pytest.raises(ClientError) as exhausted:
        attempts.after(_refusal(503, "overloaded", "0"))
    assert exhausted.value.code == "overloaded" and exhausted.value.retry_after == 0.0


def test_other_answers_end_the_call() -> None:
    attempts = _attempts()
    attempts.attempt = 1
    assert attempts.after(httpx.Response(202, json={"msg_id": "m1"})) is None
    assert attempts.result == {"msg_id": "m1"}
    with pytest.raises(ClientError) as refused:
        attempts.after(_refusal(422, "ttl_too_long"))
    assert (refused.value.code, refused.value.status) == ("ttl_too_long", 422)
    with pytest.raises(ClientError) as not_json:
        attempts.after(httpx.Response(502, text="bad gateway"))
    assert (not_json.value.code, not_json.value.status) == ("http_error", 502)


@pytest.mark.parametrize(
    ("method", "replayable", "retried"),
    [
        ("POST", False, False),
        ("POST", True, True),
        ("GET", False, True),
        ("PUT", False, True),
        ("DELETE", False, True),
        ("PATCH", False, False),
    ],
)
def test_a_broken_connection_is_retried_only_where_running_twice_is_harmless(
    method: str, replayable: bool, retried: bool
) -> None:
    attempts = _attempts(method, replayable=replayable)
    attempts.attempt = 1
    lost = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    for error, code in ((lost, "no_answer"), (httpx.ConnectError("refused"), "unreachable")):
        if retried:
            assert FIRST_BACKOFF / 2 <= (attempts.after(error) or 0) <= FIRST_BACKOFF
        else:
            with pytest.raises(ClientError) as raised:
                attempts.after(error)
            assert raised.value.code == code


def test_quick_form_paths_and_headers() -> None:
    assert quick_call("d 1", "x", {}).path == "/api/v1/push/device/d%201"
    assert quick_call({"devices": ["d1"]}, "x", {}).path == "/api/v1/push/device/d1"
    assert quick_call({"alias": "u 42/x"}, "x", {}).path == "/api/v1/push/alias/user/u%2042%2Fx"
    assert (
        quick_call({"tags": "vip and not staff"}, "x", {}).path == "/api/v1/push/tag/vip%20and%20not%20staff"
    )
    assert quick_call({"broadcast": True}, "x", {}).path == "/api/v1/push/broadcast"
    call = quick_call(
        "d1", "hé", {"Title": "Grüße", "Priority": None, "TTL": 90, "Data": {"k": 1}, "Biz-Id": "b"}
    )
    assert call.body == "hé".encode() and call.replayable
    assert dict(call.headers) == {
        "Content-Type": "text/plain; charset=utf-8",
        "Title": "Grüße".encode(),
        "TTL": b"90",
        "Data": '{"k":1}',
        "Biz-Id": b"b",
    }
    assert not quick_call("d1", "x", {"Biz-Id": None}).replayable
    for target in ({"devices": ["a", "b"]}, {"filter": {}}, {"broadcast": False}, {"file_id": "f"}):
        with pytest.raises(ClientError) as bad:
            quick_call(target, "x", {})
        assert bad.value.code == "bad_quick_target"
