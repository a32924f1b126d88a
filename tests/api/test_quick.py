"""Issue 17 part 1: the quick push form, ``curl -d`` with an app token, against the real server.

The README's one curl line is run with the real ``curl`` binary and delivers to a device on MQTT."""

from __future__ import annotations

import json
import subprocess
import time
from queue import Queue
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from starlette.datastructures import Headers

from mqttpush import signing
from mqttpush.api.quick import quick_request
from mqttpush.device import DeviceClient
from mqttpush.errors import BadRequest, InvalidContent
from tests.conftest import Running, cli_json

QUICK_ROUTES = [
    "/api/v1/push/device/{device}",
    "/api/v1/push/alias/user/u42",
    "/api/v1/push/tag/" + quote("vip and not staff", safe=""),
    "/api/v1/push/broadcast",
]


def _token(r: Running, scope: str = "push") -> str:
    doc = cli_json("app", "token", "create", r.app_key, "--data-dir", str(r.data_dir), "--scope", scope)
    token: str = doc["token"]
    return token


def _curl(*args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=30, check=True
    )
    body, _, status = proc.stdout.rpartition("\n")
    return int(status), json.loads(body)


def test_the_readme_curl_line_reaches_a_connected_device(running: Running) -> None:
    r = running
    token = _token(r)
    ((device, device_token),) = r.register()
    got: Queue[dict[str, Any]] = Queue()
    client = DeviceClient.from_server(r.url, device, device_token, on_message=got.put)
    client.connect()
    try:
        proc = subprocess.run(
            [
                "curl",
                "-s",
                "-H",
                f"Authorization: Bearer {token}",
                "-H",
                "Title: Hi",
                "-d",
                "hello",
                f"{r.url}/api/v1/push/device/{device}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        msg_id = json.loads(proc.stdout)["msg_id"]
        envelope = got.get(timeout=10)
        assert (envelope["id"], envelope["title"], envelope["body"]) == (msg_id, "Hi", "hello")
        r.wait_state(msg_id, device, "arrived")
    finally:
        client.disconnect()


def test_headers_become_the_push_request(running: Running) -> None:
    r = running
    token = _token(r)
    ((device, device_token),) = r.register()
    got: Queue[dict[str, Any]] = Queue()
    client = DeviceClient.from_server(r.url, device, device_token, on_message=got.put)
    client.connect()
    try:
        url = f"{r.url}/api/v1/push/device/{device}"
        auth = ("-H", f"Authorization: Bearer {token}")
        status, doc = _curl(
            *auth,
            "-H",
            "Title: Grüße 🚀",  # curl sends the UTF-8 bytes as they are
            "-H",
            "Priority: 5",
            "-H",
            "TTL: 90",
            "-H",
            'Data: {"sku": 42}',
            "-H",
            "Biz-Id: order-7",
            "-d",
            "a+b&c=d 100%",  # what curl -d sends as a form: kept as typed, not form-decoded
            url,
        )
        assert status == 202
        envelope = got.get(timeout=10)
        assert envelope["title"] == "Grüße 🚀"
        assert envelope["body"] == "a+b&c=d 100%"
        assert envelope["data"] == {"sku": 42}
        assert envelope["expires_at"] - envelope["sent_at"] == pytest.approx(90, abs=1)
        with r.client() as c:
            assert c.message(doc["msg_id"])["priority"] == "high"
        again = _curl(*auth, "-H", "Biz-Id: order-7", "-d", "other", url)
        assert again == (202, doc)  # same idempotency key: same message, nothing resent
        # A trailing newline (curl --data-binary @file) is dropped; text/plain is taken too.
        status, _ = _curl(
            *auth, "-H", "Content-Type: text/plain; charset=utf-8", "--data-binary", "line\n", url
        )
        assert status == 202
        assert got.get(timeout=10)["body"] == "line"
    finally:
        client.disconnect()


def test_alias_tag_and_broadcast_answer_like_push(running: Running) -> None:
    r = running
    token = _token(r)
    ((device, _),) = r.register()
    with r.client() as c:
        c.bind_alias(device, "u 42/x", "user")
        c.update_tags(device, add=["vip"])
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=r.url, headers=headers) as http:
        alias = http.post("/api/v1/push/alias/user/" + quote("u 42/x", safe=""), content=b"to the alias")
        assert alias.status_code == 202, alias.text
        assert set(alias.json()) == {"msg_id"}
        r.wait_state(alias.json()["msg_id"], device, "published")
        tag = http.post("/api/v1/push/tag/" + quote("vip and not staff", safe=""), content=b"to a tag")
        assert tag.status_code == 202, tag.text
        assert set(tag.json()) == {"task_id", "msg_id"}
        broadcast = http.post("/api/v1/push/broadcast", headers={"Title": "all"})
        assert broadcast.status_code == 202, broadcast.text
        assert set(broadcast.json()) == {"task_id", "msg_id"}
        with r.client() as c:
            task = c.task(tag.json()["task_id"])
            assert task["task_id"] == tag.json()["task_id"]


def test_an_hmac_signed_quick_push_signs_the_raw_body(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    path = f"/api/v1/push/device/{device}"
    body = "signed ✓".encode()
    headers = signing.signed_headers(r.app_key, r.app_secret, "POST", path, body, time.time())
    resp = httpx.post(
        r.url + path, content=body, headers=headers | {"Content-Type": "text/plain", "Title": "t"}
    )
    assert resp.status_code == 202, resp.text
    tampered = signing.signed_headers(r.app_key, r.app_secret, "POST", path, b"other", time.time())
    resp = httpx.post(r.url + path, content=body, headers=tampered)
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "bad_signature"


@pytest.mark.parametrize("route", QUICK_ROUTES)
def test_bad_input_on_every_quick_route_is_a_4xx_with_a_stable_code(running: Running, route: str) -> None:
    r = running
    token = _token(r)
    ((device, _),) = r.register()
    with r.client() as c:  # every route has a target, so only the input is wrong
        c.bind_alias(device, "u42", "user")
        c.update_tags(device, add=["vip"])
    path = route.format(device=device)
    auth = {"Authorization": f"Bearer {token}"}
    cases: list[tuple[dict[str, str], bytes, int, str]] = [
        ({}, b"x", 401, "unknown_app"),
        ({"Authorization": "Bearer mpt_" + "A" * 43}, b"x", 401, "bad_token"),
        (auth | {"Priority": "urgent!"}, b"x", 422, "bad_header"),
        (auth | {"TTL": "-5"}, b"x", 422, "bad_header"),
        (auth | {"TTL": "0"}, b"x", 422, "bad_header"),
        (auth | {"TTL": "99999999d"}, b"x", 422, "ttl_too_long"),
        (auth | {"Data": "{not json"}, b"x", 422, "bad_header"),
        (auth | {"Data": "[1, 2]"}, b"x", 422, "bad_header"),
        (auth | {"Data": '{"x": NaN}'}, b"x", 422, "invalid_json_number"),
        (auth | {"Biz-Id": "b" * 129}, b"x", 422, "bad_header"),
        (auth, b"\xff\xfe not utf-8", 400, "invalid_text"),
        (auth | {"Content-Type": "application/json"}, b'{"a": 1}', 415, "unsupported_media_type"),
        (auth | {"Content-Type": "text/plain; charset=latin-1"}, b"x", 415, "unsupported_media_type"),
        (auth, b"", 422, "empty_notification"),
        (auth, b"x" * ((1 << 20) + 1), 413, "body_too_large"),
        (auth, b"x" * 5000, 413, "envelope_too_large"),
    ]
    with httpx.Client(base_url=r.url) as http:
        for headers, body, status, code in cases:
            resp = http.post(path, content=body, headers=headers)
            assert resp.status_code == status, (headers, resp.text)
            assert resp.headers["content-type"] == "application/json"
            assert resp.json()["error"]["code"] == code, (headers, resp.text)
        # the server stays up and the route still works
        assert http.post(path, content=b"fine", headers=auth).status_code == 202


def test_unknown_targets_are_refused(running: Running) -> None:
    r = running
    token = _token(r)
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=r.url, headers=auth) as http:
        for path, status, code in [
            ("/api/v1/push/device/d" + "0" * 20, 404, "unknown_device"),
            ("/api/v1/push/device/not%20an%20id", 422, "invalid_target"),
            ("/api/v1/push/alias/user/nobody", 404, "unknown_alias"),
            ("/api/v1/push/alias/bad%20type/x", 422, "invalid_target"),
            ("/api/v1/push/tag/" + quote("vip and (", safe=""), 422, "bad_tag_expr"),
        ]:
            resp = http.post(path, content=b"x")
            assert (resp.status_code, resp.json()["error"]["code"]) == (status, code), (path, resp.text)


def test_quick_request_is_pure_and_maps_every_header() -> None:
    headers = Headers(
        {"x-title": "T", "x-priority": "LOW", "ttl": "2h", "data": '{"k": [1]}', "biz-id": "b1"}
    )
    req = quick_request({"devices": ["d1"]}, b"body\r\n", headers)
    assert req.notification is not None
    assert (req.notification.title, req.notification.body) == ("T", "body")
    assert (req.policy.priority, req.policy.ttl, req.policy.biz_id) == ("normal", 7200, "b1")
    assert req.data == {"k": [1]}
    with pytest.raises(BadRequest):
        quick_request({"broadcast": True}, b"\xc3", Headers({}))
    for name, value in [("Priority", "6"), ("TTL", "1y"), ("Data", '"s"'), ("Biz-Id", "")]:
        with pytest.raises(InvalidContent) as caught:
            quick_request({"broadcast": True}, b"x", Headers({name: value}))
        assert caught.value.code == "bad_header" and name in caught.value.message
