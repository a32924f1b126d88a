"""Issue 17: the webhook routes refuse bad input with a 4xx in the error shape and a stable code,
are signed app routes, and keep each app's webhooks to itself."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from mqttpush import signing
from mqttpush.store import Store
from mqttpush.store.webhooks import MAX_WEBHOOKS_PER_APP
from tests.conftest import Running


def _signed(
    r: Running, method: str, path: str, body: bytes = b"", *, key: str = "", secret: str = ""
) -> httpx.Response:
    headers = signing.signed_headers(
        key or r.app_key, secret or r.app_secret, method, path, body, time.time()
    )
    if body:
        headers["Content-Type"] = "application/json"
    return httpx.request(method, r.url + path, content=body, headers=headers, timeout=10)


def _add(r: Running, doc: object, **auth: str) -> httpx.Response:
    return _signed(r, "POST", "/api/v1/webhooks", json.dumps(doc).encode(), **auth)


def _refusal(resp: httpx.Response) -> tuple[int, str]:
    doc = resp.json()
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"} and doc["error"]["message"], doc
    return resp.status_code, doc["error"]["code"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"url": "ftp://example.com/hook", "events": ["alarm"]}, (422, "bad_webhook_url")),
        ({"url": "https:///nohost", "events": ["alarm"]}, (422, "bad_webhook_url")),
        ({"url": "http://exa mple.com/", "events": ["alarm"]}, (422, "bad_webhook_url")),
        ({"url": "http://example.com:99999/", "events": ["alarm"]}, (422, "bad_webhook_url")),
        ({"url": "example.com/hook", "events": ["alarm"]}, (422, "bad_webhook_url")),
        ({"url": "https://example.com/", "events": ["delivery.read"]}, (422, "unknown_event")),
        ({"url": "https://example.com/", "events": []}, (422, "invalid_request")),
        ({"url": "https://example.com/", "events": "alarm"}, (422, "invalid_request")),
        ({"url": "https://example.com/"}, (422, "invalid_request")),
        ({"events": ["alarm"]}, (422, "invalid_request")),
        ({"url": "https://example.com/", "events": ["alarm"], "secret": "mine"}, (422, "invalid_request")),
        ({"url": "https://example.com/" + "x" * 3000, "events": ["alarm"]}, (422, "invalid_request")),
        ([], (400, "malformed_json")),
    ],
)
def test_bad_registrations_are_refused(running: Running, body: object, expected: tuple[int, str]) -> None:
    assert _refusal(_add(running, body)) == expected
    assert _signed(running, "GET", "/api/v1/webhooks").json() == {"webhooks": []}  # nothing stored


def test_malformed_json_and_unsigned_requests(running: Running) -> None:
    r = running
    assert _refusal(_signed(r, "POST", "/api/v1/webhooks", b"{not json")) == (400, "malformed_json")
    for method, path in (
        ("POST", "/api/v1/webhooks"),
        ("GET", "/api/v1/webhooks"),
        ("DELETE", "/api/v1/webhooks/wh1"),
    ):
        resp = httpx.request(method, r.url + path, headers={signing.KEY_HEADER: r.app_key}, timeout=10)
        assert _refusal(resp) == (401, "missing_signature")
    wrong = _signed(r, "GET", "/api/v1/webhooks", secret="not-the-secret")
    assert _refusal(wrong) == (401, "bad_signature")


def test_registration_limit_removal_and_isolation(running: Running) -> None:
    r = running
    created = _add(r, {"url": "https://example.com/0", "events": ["alarm", "alarm", "task.done"]})
    assert created.status_code == 201
    first = created.json()
    assert set(first) == {"webhook_id", "secret"}
    listed = _signed(r, "GET", "/api/v1/webhooks").json()["webhooks"]
    assert [(w["webhook_id"], w["events"], w["state"], w["backlog"]) for w in listed] == [
        (first["webhook_id"], ["alarm", "task.done"], "active", 0)
    ]
    assert "secret" not in listed[0]
    for i in range(1, MAX_WEBHOOKS_PER_APP):
        assert _add(r, {"url": f"https://example.com/{i}", "events": ["alarm"]}).status_code == 201
    assert _refusal(_add(r, {"url": "https://example.com/x", "events": ["alarm"]})) == (
        422,
        "too_many_webhooks",
    )

    other = Store(r.data_dir).apps.create_app("other")
    auth = {"key": other.app_key, "secret": other.secret}
    assert _signed(r, "GET", "/api/v1/webhooks", **auth).json() == {"webhooks": []}
    path = f"/api/v1/webhooks/{first['webhook_id']}"
    assert _refusal(_signed(r, "DELETE", path, **auth)) == (404, "unknown_webhook")
    assert _signed(r, "DELETE", path).json() == {"webhook_id": first["webhook_id"], "removed": True}
    assert _refusal(_signed(r, "DELETE", path)) == (404, "unknown_webhook")
    assert len(_signed(r, "GET", "/api/v1/webhooks").json()["webhooks"]) == MAX_WEBHOOKS_PER_APP - 1
