"""The HTTP wire format of docs/api.md: signing, registration, push, status, and every refusal."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from mqttpush import signing
from tests.conftest import Running


def _signed(
    r: Running,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    now: float | None = None,
    secret: str | None = None,
    nonce: str | None = None,
) -> httpx.Response:
    headers = signing.signed_headers(
        r.app_key, secret or r.app_secret, method, path, body, time.time() if now is None else now
    )
    if nonce is not None:
        ts = headers[signing.TIMESTAMP_HEADER]
        headers[signing.NONCE_HEADER] = nonce
        headers[signing.SIGNATURE_HEADER] = signing.sign(
            secret or r.app_secret, method, path, ts, nonce, body
        )
    return httpx.request(method, r.url + path, content=body, headers=headers, timeout=10)


def _push_body(device: str, **extra: Any) -> bytes:
    return json.dumps(
        {"target": {"devices": [device]}, "notification": {"title": "t", "body": "b"}} | extra
    ).encode()


def _error(resp: httpx.Response) -> tuple[int, str]:
    doc = resp.json()
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}, doc
    assert doc["error"]["message"]
    return resp.status_code, doc["error"]["code"]


def test_register_is_idempotent_per_install_id(running: Running) -> None:
    r = running
    url = r.url + "/api/v1/devices"
    body = {"install_id": "i-1", "platform": "ios", "app_version": "1.2.0", "locale": "en-GB"}
    first = httpx.post(url, json=body, headers={signing.KEY_HEADER: r.app_key})
    again = httpx.post(url, json=body, headers={signing.KEY_HEADER: r.app_key})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["device_id"] == again.json()["device_id"]
    assert first.json()["device_token"] != again.json()["device_token"]
    me = httpx.get(
        r.url + "/api/v1/devices/me", headers={"Authorization": f"Bearer {again.json()['device_token']}"}
    )
    assert me.status_code == 200
    assert me.json()["app_key"] == r.app_key
    assert me.json()["mqtt_url"] == f"mqtt://127.0.0.1:{r.mqtt_port}"
    stale = httpx.get(
        r.url + "/api/v1/devices/me", headers={"Authorization": f"Bearer {first.json()['device_token']}"}
    )
    assert _error(stale) == (401, "bad_token")


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({}, {"install_id": "x", "platform": "ios"}, (401, "unknown_app")),
        ({signing.KEY_HEADER: "anope"}, {"install_id": "x", "platform": "ios"}, (401, "unknown_app")),
        (None, {"install_id": "x", "platform": "symbian"}, (422, "invalid_request")),
        (None, {"install_id": "", "platform": "ios"}, (422, "invalid_request")),
        (None, {"platform": "ios"}, (422, "invalid_request")),
        (None, {"install_id": "x", "platform": "ios", "extra": 1}, (422, "invalid_request")),
        (None, [1, 2], (400, "malformed_json")),
    ],
)
def test_register_refusals(
    running: Running, headers: dict[str, str] | None, body: Any, expected: tuple[int, str]
) -> None:
    h = {signing.KEY_HEADER: running.app_key} if headers is None else headers
    resp = httpx.post(running.url + "/api/v1/devices", content=json.dumps(body), headers=h)
    assert _error(resp) == expected


def test_push_and_status_wire_format(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    resp = _signed(r, "POST", "/api/v1/push", _push_body(device))
    assert resp.status_code == 202
    msg_id = resp.json()["msg_id"]
    assert set(resp.json()) == {"msg_id"}
    status = _signed(r, "GET", f"/api/v1/messages/{msg_id}")
    assert status.status_code == 200
    doc = status.json()
    assert doc["msg_id"] == msg_id
    (delivery,) = doc["deliveries"]
    assert {"device_id", "state", "channel", "history"} <= set(delivery)
    assert delivery["device_id"] == device and delivery["channel"] == "mqtt"


def test_signature_covers_the_query_string(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    msg_id = r.push([device])
    assert _signed(r, "GET", f"/api/v1/messages/{msg_id}?verbose=1").status_code == 200
    headers = signing.signed_headers(
        r.app_key, r.app_secret, "GET", f"/api/v1/messages/{msg_id}", b"", time.time()
    )
    resp = httpx.get(r.url + f"/api/v1/messages/{msg_id}?verbose=1", headers=headers)
    assert _error(resp) == (401, "bad_signature")


def test_push_refusals(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    path = "/api/v1/push"
    cases: list[tuple[httpx.Response, tuple[int, str]]] = [
        (_signed(r, "POST", path, b"{not json"), (400, "malformed_json")),
        (_signed(r, "POST", path, b"[]"), (400, "malformed_json")),
        (_signed(r, "POST", path, _push_body("dunknown0000000000000")), (404, "unknown_device")),
        (
            _signed(r, "POST", path, _push_body(device, notification={"title": "x" * 4100})),
            (413, "envelope_too_large"),
        ),
        (_signed(r, "POST", path, _push_body(device, policy={"ttl": 11 * 86400})), (422, "ttl_too_long")),
        (_signed(r, "POST", path, _push_body(device, policy={"ttl": -1})), (422, "invalid_request")),
        (_signed(r, "POST", path, _push_body(device, notification={})), (422, "empty_notification")),
        (
            _signed(
                r, "POST", path, json.dumps({"target": {"devices": [device]}, "type": "message"}).encode()
            ),
            (422, "empty_message"),
        ),
        (
            _signed(
                r,
                "POST",
                path,
                json.dumps({"target": {"devices": [device] * 1001}, "notification": {"title": "x"}}).encode(),
            ),
            (422, "too_many_targets"),
        ),
        (
            _signed(
                r,
                "POST",
                path,
                json.dumps({"target": {"tags": "a &&"}, "notification": {"title": "x"}}).encode(),
            ),
            (422, "bad_tag_expr"),
        ),
        (
            _signed(r, "POST", path, json.dumps({"notification": {"title": "x"}}).encode()),
            (422, "invalid_request"),
        ),
        (_signed(r, "POST", path, _push_body(device), secret="not-the-secret"), (401, "bad_signature")),
        (_signed(r, "POST", path, _push_body(device), now=time.time() - 301), (401, "stale_timestamp")),
        (_signed(r, "POST", path, _push_body(device), now=time.time() + 400), (401, "stale_timestamp")),
        (_signed(r, "POST", path, _push_body(device), nonce="short"), (401, "bad_nonce")),
        (
            httpx.post(r.url + path, content=_push_body(device), headers={signing.KEY_HEADER: r.app_key}),
            (401, "missing_signature"),
        ),
        (httpx.post(r.url + path, content=_push_body(device)), (401, "unknown_app")),
        (_signed(r, "POST", path, b"x" * (1 << 20 + 1)), (413, "body_too_large")),
        (_signed(r, "GET", "/api/v1/messages/nosuch"), (404, "unknown_message")),
        (httpx.get(r.url + "/api/v1/nowhere"), (404, "not_found")),
        (httpx.delete(r.url + "/api/v1/push"), (405, "method_not_allowed")),
    ]
    for resp, expected in cases:
        assert _error(resp) == expected, resp.request.content[:80]
    # nothing refused was stored or sent, and the server is still serving
    assert httpx.get(r.url + "/healthz").json()["ok"] is True
    with r.client() as c:
        assert c.push({"target": {"devices": [device]}, "notification": {"title": "still up"}})["msg_id"]


def test_replayed_nonce_is_refused(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    body = _push_body(device)
    headers = signing.signed_headers(r.app_key, r.app_secret, "POST", "/api/v1/push", body, time.time())
    first = httpx.post(r.url + "/api/v1/push", content=body, headers=headers)
    replay = httpx.post(r.url + "/api/v1/push", content=body, headers=headers)
    assert first.status_code == 202
    assert _error(replay) == (401, "replayed_nonce")


def test_other_apps_message_is_not_found(running: Running) -> None:
    from mqttpush.store import Store

    r = running
    ((device, _),) = r.register()
    msg_id = r.push([device])
    other = Store(r.data_dir).apps.create_app("other")
    path = f"/api/v1/messages/{msg_id}"
    headers = signing.signed_headers(other.app_key, other.secret, "GET", path, b"", time.time())
    assert _error(httpx.get(r.url + path, headers=headers)) == (404, "unknown_message")


def test_openapi_documents_every_route(running: Running) -> None:
    paths = httpx.get(running.url + "/openapi.json").json()["paths"]
    assert {"/api/v1/devices", "/api/v1/devices/me", "/api/v1/push", "/api/v1/messages/{msg_id}"} <= set(
        paths
    )
