"""Issue 18 item 2: every bad input gets a clear refusal (4xx and the JSON error shape of
docs/api.md), never a traceback or a 500, and the server stays up to answer the next request."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import pytest

from mqttpush import signing
from tests.conftest import Running


def _signed(
    r: Running, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> httpx.Response:
    signed = signing.signed_headers(r.app_key, r.app_secret, method, path, body, time.time())
    return httpx.request(method, r.url + path, content=body, headers=signed | (headers or {}), timeout=10)


def _error(resp: httpx.Response) -> tuple[int, str]:
    assert resp.headers["content-type"] == "application/json", resp.text
    doc = resp.json()
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}, doc
    assert doc["error"]["message"]
    return resp.status_code, doc["error"]["code"]


def _raw(r: Running, request: bytes) -> bytes:
    """What the server answers to bytes no HTTP client would send (read until it closes)."""
    host, _, port = r.url.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def _still_up(r: Running) -> None:
    assert httpx.get(r.url + "/healthz").json()["ok"] is True


def _push(device: str, data: str = "{}", title: str = '"t"') -> bytes:
    """A push body written by hand: Python's json.dumps would refuse (or escape) what these tests send."""
    return (
        f'{{"target": {{"devices": ["{device}"]}}, "notification": {{"title": {title}}}, "data": {data}}}'
    ).encode()


# --- 1. NaN and Infinity -----------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1E999"])
def test_nan_and_infinity_are_refused_on_every_json_route(running: Running, number: str) -> None:
    r = running
    ((device, token),) = r.register()
    cases: list[tuple[str, str, bytes]] = [
        ("POST", "/api/v1/push", _push(device, f'{{"v": {number}}}')),
        ("POST", "/api/v1/push", _push(device, f'{{"deep": [1, {{"v": {number}}}]}}')),
        (
            "POST",
            "/api/v1/push/batch",
            f'{{"notification": {{"title": "t"}}, "items": [{{"device": "{device}", "vars": {{"v": {number}}}}}]}}'.encode(),
        ),
        (
            "PUT",
            "/api/v1/templates/hi",
            f'{{"notification": {{"title": "t"}}, "data": {{"v": {number}}}}}'.encode(),
        ),
        ("PUT", "/api/v1/settings", f'{{"daily_cap": {number}}}'.encode()),
        ("PATCH", f"/api/v1/devices/{device}", f'{{"test": {number}}}'.encode()),
    ]
    for method, path, body in cases:
        assert _error(_signed(r, method, path, body)) == (422, "invalid_json_number"), (path, body)
    register = httpx.post(
        r.url + "/api/v1/devices",
        content=f'{{"install_id": "i", "platform": "ios", "locale": {number}}}'.encode(),
        headers={signing.KEY_HEADER: r.app_key},
    )
    assert _error(register) == (422, "invalid_json_number")
    tags = httpx.post(
        r.url + f"/api/v1/devices/{device}/tags",
        content=f'{{"add": [{number}]}}'.encode(),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert _error(tags) == (422, "invalid_json_number")
    # nothing was stored: the template does not exist, the device list of messages is empty
    assert _signed(r, "GET", "/api/v1/templates").json() == {"templates": []}
    assert _signed(r, "GET", "/api/v1/messages").json() == {"messages": []}


def test_a_refused_number_names_its_place(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    resp = _signed(r, "POST", "/api/v1/push", _push(device, '{"prices": [1, 2, NaN]}'))
    assert _error(resp) == (422, "invalid_json_number")
    assert resp.json()["error"]["message"].startswith("data.prices[2]:")


def test_finite_numbers_still_go_out_as_json_every_parser_reads(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    resp = _signed(r, "POST", "/api/v1/push", _push(device, '{"big": 1.7e308, "small": -5e-324, "n": -0.0}'))
    assert resp.status_code == 202, resp.text
    r.call(r.server.dispatcher.drained())
    stored = r.server.broker.retained_payload(f"mqttpush/{r.app_key}/d/{device}/m/{resp.json()['msg_id']}")
    assert stored is not None

    def refuse(token: str) -> Any:
        raise AssertionError(f"{token} in an envelope")

    assert json.loads(stored, parse_constant=refuse)["data"]["big"] == 1.7e308


# --- 2. invalid Unicode ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(lambda d: _push(d, title='"\\ud800"'), id="title-escape"),
        pytest.param(lambda d: _push(d, title='"ok \\udfff ok"'), id="title-low-surrogate"),
        pytest.param(lambda d: _push(d, '{"\\ud800": 1}'), id="data-key"),
        pytest.param(lambda d: _push(d, '{"k": ["\\udc00"]}'), id="data-list"),
        pytest.param(
            lambda d: _push(d, '{"k": "X"}').replace(b"X", b"\xed\xa0\x80"), id="surrogate-as-utf8-bytes"
        ),
    ],
)
def test_lone_surrogates_are_refused_not_a_500(running: Running, body: Any) -> None:
    r = running
    ((device, _),) = r.register()
    assert _error(_signed(r, "POST", "/api/v1/push", body(device))) == (422, "invalid_unicode")
    _still_up(r)


def test_lone_surrogates_are_refused_in_templates_and_registration(running: Running) -> None:
    r = running
    template = b'{"notification": {"title": "Hi \\ud83d"}}'
    assert _error(_signed(r, "PUT", "/api/v1/templates/hi", template)) == (422, "invalid_unicode")
    register = httpx.post(
        r.url + "/api/v1/devices",
        content=b'{"install_id": "\\udead", "platform": "ios"}',
        headers={signing.KEY_HEADER: r.app_key},
    )
    assert _error(register) == (422, "invalid_unicode")


def test_surrogate_pairs_and_invalid_utf8_bytes(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    pair = _signed(r, "POST", "/api/v1/push", _push(device, '{"smile": "\\ud83d\\ude00"}'))
    assert pair.status_code == 202, pair.text  # a pair is one character, U+1F600
    not_utf8 = _signed(r, "POST", "/api/v1/push", _push(device).replace(b'"t"', b'"\xff"'))
    assert _error(not_utf8) == (400, "malformed_json")


# --- 3. numeric headers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "timestamp",
    [
        "1" + "0" * 400,
        "9" * 21,
        "99999999999999999999",
        "-1",
        "+1700000000",
        "1700 000000",
        "1_700_000_000",
        "1.7e9",
        "\xb2",
        "0x65",
    ],
)
def test_a_timestamp_out_of_range_or_malformed_is_stale_not_a_500(running: Running, timestamp: str) -> None:
    r = running
    headers = signing.signed_headers(r.app_key, r.app_secret, "GET", "/api/v1/templates", b"", time.time())
    headers[signing.TIMESTAMP_HEADER] = timestamp
    resp = httpx.get(
        r.url + "/api/v1/templates", headers={k: v.encode("latin-1") for k, v in headers.items()}
    )
    assert _error(resp) == (401, "stale_timestamp")


def test_a_current_timestamp_longer_than_20_digits_is_refused(running: Running) -> None:
    r = running
    resp = _signed(r, "GET", "/api/v1/templates")
    assert resp.status_code == 200
    headers = signing.signed_headers(r.app_key, r.app_secret, "GET", "/api/v1/templates", b"", time.time())
    headers[signing.TIMESTAMP_HEADER] = "0" * 20 + headers[signing.TIMESTAMP_HEADER]
    assert _error(httpx.get(r.url + "/api/v1/templates", headers=headers)) == (401, "stale_timestamp")


@pytest.mark.parametrize(
    "length",
    [b"1" + b"0" * 400, b"99999999999999999999", b"abc", b"-1", b"\xb2", b"1e3"],
)
def test_a_bad_content_length_is_a_400_from_the_http_parser(running: Running, length: bytes) -> None:
    r = running
    answer = _raw(r, b"POST /api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n{}")
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    _still_up(r)


def test_a_declared_length_over_the_limit_is_413_before_the_body(running: Running) -> None:
    r = running
    path = "/api/v1/push"
    headers = signing.signed_headers(r.app_key, r.app_secret, "POST", path, b"", time.time())
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    answer = _raw(
        r,
        f"POST {path} HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {1 << 30}\r\nConnection: close\r\n\r\n".encode(),
    )
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 413 ")
    assert json.loads(body)["error"]["code"] == "body_too_large"


# --- 4. the HTTP stack's own answers ----------------------------------------------------------------


def test_the_http_stack_answers_in_the_error_shape(running: Running) -> None:
    r = running
    not_allowed = httpx.delete(r.url + "/api/v1/push")
    assert _error(not_allowed) == (405, "method_not_allowed")
    assert not_allowed.headers["allow"] == "POST"
    # two routes on one path (GET and DELETE /api/v1/tasks/{id}): Allow names both
    put_task = httpx.put(r.url + "/api/v1/tasks/t1")
    assert _error(put_task) == (405, "method_not_allowed")
    assert put_task.headers["allow"] == "DELETE, GET"
    for path in ("/api/v1/push/", "/api/v1/devices/", "/healthz/", "/api/v1/nowhere", "/"):
        resp = httpx.post(r.url + path, content=b"{}", follow_redirects=False)
        assert _error(resp) == (404, "not_found"), path
        assert "location" not in resp.headers


def test_a_malformed_request_is_a_json_400_and_the_server_stays_up(running: Running) -> None:
    r = running
    for request in (
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
    ):
        answer = _raw(r, request)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:200]
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"content-type: application/json" in head.lower()
        assert json.loads(body)["error"]["code"] == "malformed_request"
    _still_up(r)


# --- 5. Content-Type ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "json"],
)
def test_a_body_that_is_not_declared_json_is_415(running: Running, content_type: str) -> None:
    r = running
    ((device, token),) = r.register()
    body = _push(device)
    headers = {"Content-Type": content_type}
    assert _error(_signed(r, "POST", "/api/v1/push", body, headers)) == (415, "unsupported_media_type")
    assert _error(_signed(r, "PUT", "/api/v1/settings", b"{}", headers)) == (415, "unsupported_media_type")
    register = httpx.post(
        r.url + "/api/v1/devices",
        content=b'{"install_id": "i", "platform": "ios"}',
        headers={signing.KEY_HEADER: r.app_key} | headers,
    )
    assert _error(register) == (415, "unsupported_media_type")
    tags = httpx.post(
        r.url + f"/api/v1/devices/{device}/tags",
        content=b'{"add": ["a"]}',
        headers={"Authorization": f"Bearer {token}"} | headers,
    )
    assert _error(tags) == (415, "unsupported_media_type")


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
    ],
)
def test_json_or_no_content_type_is_accepted(running: Running, content_type: str | None) -> None:
    r = running
    ((device, _),) = r.register()
    headers = {"Content-Type": content_type} if content_type else {}
    resp = _signed(r, "POST", "/api/v1/push", _push(device), headers)
    assert resp.status_code == 202, resp.text


def test_the_file_upload_still_takes_text(running: Running) -> None:
    r = running
    devices = [d for d, _ in r.register(2)]
    body = "\n".join(devices).encode()
    resp = _signed(r, "POST", "/api/v1/files", body, {"Content-Type": "text/plain"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["lines"] == 2


# --- 6. policy bounds --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "code"),
    [
        ({"start_at": 1e300}, "bad_policy"),
        ({"start_at": 10**30}, "bad_policy"),
        ({"start_at": 4_102_444_801}, "bad_policy"),
        ({"start_at": 0}, "bad_policy"),
        ({"start_at": 1e300, "schedule": {"daily": "09:00"}}, "bad_policy"),
        ({"daily_cap": 10**30}, "bad_policy"),
        ({"daily_cap": 10_001}, "bad_policy"),
        ({"daily_cap": 0}, "bad_policy"),
        ({"pace": {"per_second": 1e-300}}, "bad_policy"),
        ({"pace": {"per_second": 1e9}}, "bad_policy"),
        ({"pace": {"over_minutes": 10**20}}, "bad_policy"),
        ({"pace": {"over_minutes": 0.001}}, "bad_policy"),
        ({"repush": {"after": 1e300, "max": 1}}, "bad_policy"),
        ({"repush": {"after": 0.001}}, "bad_policy"),
        ({"schedule": {"daily": "09:00", "until": 1e300}}, "bad_schedule"),
        ({"schedule": {"daily": "09:00", "count": 10**30}}, "bad_schedule"),
        ({"ttl": 10**30}, "ttl_too_long"),
    ],
)
def test_every_policy_number_has_a_bound(running: Running, policy: dict[str, Any], code: str) -> None:
    r = running
    ((device, _),) = r.register()
    body = json.dumps({"target": {"devices": [device]}, "notification": {"title": "t"}, "policy": policy})
    assert _error(_signed(r, "POST", "/api/v1/push", body.encode())) == (422, code)
    _still_up(r)


def test_settings_have_the_same_bounds(running: Running) -> None:
    r = running
    for doc in ({"daily_cap": 10**30}, {"daily_cap": 0}):
        assert _error(_signed(r, "PUT", "/api/v1/settings", json.dumps(doc).encode())) == (422, "bad_policy")
    ok = _signed(r, "PUT", "/api/v1/settings", b'{"daily_cap": 10000}')
    assert ok.status_code == 200 and ok.json()["daily_cap"] == 10_000


def test_numbers_at_their_bounds_are_accepted(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    policies: list[dict[str, Any]] = [
        {"start_at": 4_102_444_800, "ttl": 60},
        {"daily_cap": 10_000},
        {"pace": {"per_second": 0.01}},
        {"pace": {"over_minutes": 14_400}},
        {"repush": {"after": 864_000, "max": 10}},
        {"schedule": {"daily": "09:00", "count": 10_000, "until": 4_102_444_800}},
    ]
    for policy in policies:
        body = json.dumps({"target": {"devices": [device]}, "notification": {"title": "t"}, "policy": policy})
        resp = _signed(r, "POST", "/api/v1/push", body.encode())
        assert resp.status_code == 202, (policy, resp.text)
