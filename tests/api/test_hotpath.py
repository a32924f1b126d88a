"""The hot path (issue 14, mqttpush/api/hotpath.py): the push routes answered in front of FastAPI
give the answers the FastAPI routes give, byte for byte where it matters, and are counted in the
same HTTP metrics.

Two apps are built over one running server's context, one with the hot path and one without
(``create_api(ctx, hot_path=False)``, the reference), and every request of the table goes to both
(re-signed for each, so each has its own nonce). The rest of tests/api sends its pushes through
the real server, whose app has the hot path: they are the wire format's conformance suite."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from mqttpush import signing
from mqttpush.api.app import create_api
from mqttpush.api.common import Incoming
from mqttpush.api.context import ApiContext
from mqttpush.api.hotpath import HotApi
from mqttpush.api.limits import RateLimiter
from tests.conftest import Running

PUSH = "/api/v1/push"


@dataclass
class Case:
    name: str
    method: str
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    sign: bool = True
    ts_offset: float = 0.0
    tamper: bool = False
    twice: bool = False
    """Send the same signed request twice (same nonce): the answer compared is the second."""


def _apps(r: Running, **fields: Any) -> tuple[FastAPI, FastAPI]:
    s = r.server

    def ctx() -> ApiContext:
        made = {k: v() if callable(v) else v for k, v in fields.items()}
        return ApiContext(s.store, s.intake, s.tasks, s.clock, lambda host: host, **made)

    return create_api(ctx()), create_api(ctx(), hot_path=False)


async def _send(app: FastAPI, r: Running, case: Case) -> httpx.Response:
    headers = dict(case.headers)
    if case.sign:
        signed = signing.signed_headers(
            r.app_key, r.app_secret, case.method, case.path, case.body, time.time() + case.ts_offset
        )
        if case.tamper:
            signed[signing.SIGNATURE_HEADER] = "0" * 64
        headers = signed | headers
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as client:
        answer = await client.request(case.method, case.path, content=case.body, headers=headers)
        if case.twice:
            answer = await client.request(case.method, case.path, content=case.body, headers=headers)
        return answer


def _seen(answer: httpx.Response) -> tuple[int, list[tuple[str, str]], Any]:
    """What the client sees: status, every header in order, the body with ids as their shape and
    numbers in messages masked (a timestamp's distance may tick between the two sends)."""
    doc = answer.json()
    if "error" in doc:
        doc["error"]["message"] = re.sub(r"[0-9]+", "#", doc["error"]["message"])
    else:
        doc = {k: [len(x) for x in v] if isinstance(v, list) else len(v) for k, v in doc.items()}
    return answer.status_code, [(k.decode(), v.decode()) for k, v in answer.headers.raw], doc


def _compare(r: Running, cases: list[Case], **fields: Any) -> list[tuple[int, list[tuple[str, str]], Any]]:
    seen = []
    for case in cases:
        hot, reference = _apps(r, **fields)
        got = _seen(r.call(_send(hot, r, case)))
        want = _seen(r.call(_send(reference, r, case)))
        assert got == want, case.name
        # FastAPI never built its middleware stack: the request went by the hot path alone.
        assert hot.middleware_stack is None and reference.middleware_stack is not None, case.name
        seen.append(got)
    return seen


def _push(device: str, extra: str = "") -> bytes:
    return f'{{"target": {{"devices": ["{device}"]}}, "notification": {{"title": "t"}}{extra}}}'.encode()


def _token(r: Running, scope: str) -> dict[str, str]:
    store = r.server.store
    return {"Authorization": f"Bearer {r.call(store.run(store.tokens.create, r.app_key, scope)).token}"}


def test_good_and_bad_requests_get_the_same_answers(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    json_type = {"Content-Type": "application/json"}
    cases = [
        Case("push", "POST", PUSH, _push(device), json_type),
        Case("push, no content type", "POST", PUSH, _push(device)),
        Case("push by a push token", "POST", PUSH, _push(device), _token(r, "push"), sign=False),
        Case(
            "batch",
            "POST",
            PUSH + "/batch",
            f'{{"notification": {{"title": "t"}}, "items": [{{"device": "{device}"}}, {{"device": "{device}"}}]}}'.encode(),
        ),
        Case("bad signature", "POST", PUSH, _push(device), tamper=True),
        Case("stale timestamp", "POST", PUSH, _push(device), ts_offset=-1000),
        Case("reused nonce", "POST", PUSH, _push(device), twice=True),
        Case("missing signature", "POST", PUSH, _push(device), sign=False),
        Case("unknown app", "POST", PUSH, _push(device), {signing.KEY_HEADER: "a" * 16}),
        Case("bad JSON", "POST", PUSH, b'{"target": '),
        Case("not an object", "POST", PUSH, b"[1, 2]"),
        Case("NaN", "POST", PUSH, _push(device, ', "data": {"v": NaN}')),
        Case("1e400", "POST", PUSH, _push(device, ', "data": {"v": [1e400]}')),
        Case("lone surrogate", "POST", PUSH, _push(device, ', "data": {"v": "\\ud800"}')),
        Case("invalid content", "POST", PUSH, _push(device, ', "policy": {"ttl": -1}')),
        Case("unknown field", "POST", PUSH, _push(device, ', "colour": "red"')),
        Case("bad policy", "POST", PUSH, _push(device, ', "policy": {"daily_cap": 0}')),
        Case("wrong content type", "POST", PUSH, _push(device), {"Content-Type": "text/plain"}),
        Case("oversize body", "POST", PUSH, b" " * ((1 << 20) + 1)),
        Case("oversize declared", "POST", PUSH, _push(device), {"Content-Length": str(2 << 20)}),
        Case("unknown device", "POST", PUSH, _push("d" + "0" * 20)),
        Case("read-scoped token", "POST", PUSH, _push(device), _token(r, "read"), sign=False),
        Case(
            "revoked-looking token",
            "POST",
            PUSH,
            _push(device),
            {"Authorization": "Bearer mpt_x"},
            sign=False,
        ),
        Case("batch, empty items", "POST", PUSH + "/batch", b'{"notification": {"title": "t"}, "items": []}'),
        Case("quick device", "POST", f"{PUSH}/device/{device}", b"hello", {"Title": "hi", "TTL": "90m"}),
        Case("quick alias", "POST", f"{PUSH}/alias/user/nobody", b"hello"),
        Case("quick broadcast", "POST", PUSH + "/broadcast", b"hello", {"Priority": "5"}),
        Case("quick tag", "POST", f"{PUSH}/tag/vip%20and%20beta", b"hello"),
        Case("quick bad header", "POST", f"{PUSH}/device/{device}", b"hello", {"Priority": "loud"}),
        Case("quick JSON body", "POST", f"{PUSH}/device/{device}", b"{}", json_type),
        Case("quick read token", "POST", f"{PUSH}/device/{device}", b"hi", _token(r, "read"), sign=False),
    ]
    seen = _compare(r, cases)
    assert not [h for _, headers, _ in seen for h, _ in headers if h.startswith("access-control-")]
    statuses = {case.name: status for case, (status, _, _) in zip(cases, seen, strict=True)}
    assert statuses == {
        "push": 202,
        "push, no content type": 202,
        "push by a push token": 202,
        "batch": 202,
        "bad signature": 401,
        "stale timestamp": 401,
        "reused nonce": 401,
        "missing signature": 401,
        "unknown app": 401,
        "bad JSON": 400,
        "not an object": 400,
        "NaN": 422,
        "1e400": 422,
        "lone surrogate": 422,
        "invalid content": 422,
        "unknown field": 422,
        "bad policy": 422,
        "wrong content type": 415,
        "oversize body": 413,
        "oversize declared": 413,
        "unknown device": 404,
        "read-scoped token": 403,
        "revoked-looking token": 401,
        "batch, empty items": 422,
        "quick device": 202,
        "quick alias": 404,
        "quick broadcast": 202,
        "quick tag": 202,
        "quick bad header": 422,
        "quick JSON body": 415,
        "quick read token": 403,
    }


def test_rate_limited_requests_get_the_same_answers(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    # A fresh limiter per app: one request a burst, none back within the test.
    limiter: Callable[[], RateLimiter] = lambda: RateLimiter(0.001, 1, lambda: 0.0)  # noqa: E731
    ((status, headers, doc),) = _compare(
        r, [Case("over the app's rate", "POST", PUSH, _push(device), twice=True)], app_limiter=limiter
    )
    assert (status, dict(headers)["retry-after"], doc["error"]["code"]) == (429, "1000", "rate_limited")


def test_overloaded_requests_get_the_same_answers(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    dispatcher = r.server.dispatcher
    dispatcher.lag = lambda: 2.4  # type: ignore[method-assign]
    try:
        ((status, headers, doc),) = _compare(r, [Case("overloaded", "POST", PUSH, _push(device))])
    finally:
        del dispatcher.lag
    assert (status, dict(headers)["retry-after"], doc["error"]["code"]) == (503, "3", "overloaded")


def test_a_crash_gets_the_same_500_and_is_logged(running: Running, caplog: pytest.LogCaptureFixture) -> None:
    r = running
    ((device, _),) = r.register()
    intake = r.server.intake

    async def crash(*args: Any) -> Any:
        raise RuntimeError("a bug")

    intake.push = crash  # type: ignore[method-assign]
    try:
        ((status, _, doc),) = _compare(r, [Case("crash", "POST", PUSH, _push(device))])
    finally:
        del intake.push
    assert (status, doc["error"]["code"]) == (500, "internal_error")
    crashes = [rec for rec in caplog.records if rec.getMessage() == f"unhandled error path={PUSH}"]
    assert len(crashes) == 2 and all(rec.exc_info for rec in crashes)


def test_other_requests_go_on_to_fastapi(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    hot, _ = _apps(r)
    assert isinstance(hot, HotApi) and hot.hot_path is not None
    takes = hot.hot_path.takes

    def scope(method: str, path: str) -> dict[str, Any]:
        return {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}

    for path in (PUSH, PUSH + "/batch", PUSH + "/broadcast", f"{PUSH}/device/{device}", f"{PUSH}/tag/a/b"):
        assert takes(scope("POST", path)), path
    for method, path in (
        ("GET", PUSH),
        ("POST", PUSH + "/"),
        ("POST", f"{PUSH}/device/"),
        ("POST", f"{PUSH}/device/a/b"),
        ("POST", "/api/v1/messages"),
        ("POST", "/api/v1/pushes"),
    ):
        assert not takes(scope(method, path)), (method, path)
    # A wrong method is FastAPI's 405 with every method of the path, as before.
    answer = r.call(_send(hot, r, Case("get", "GET", PUSH, b"")))
    assert answer.status_code == 405 and answer.headers["allow"] == "POST"


async def test_a_route_declared_before_a_hot_one_keeps_its_requests() -> None:
    api = HotApi()

    @api.post("/x/fixed")
    async def fixed() -> dict[str, str]:
        return {"by": "fastapi"}

    @api.post("/x/{name}")
    async def named(name: str) -> dict[str, str]:
        raise AssertionError("the hot handler answers")

    async def hot_named(request: Incoming, params: dict[str, Any]) -> JSONResponse:
        return JSONResponse({"by": "hot", "name": params["name"]})

    api.hot(named, hot_named)
    api.open_hot_path(None)

    async def post(path: str) -> Any:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return (await client.post(path)).json()

    assert await post("/x/fixed") == {"by": "fastapi"}
    assert await post("/x/other") == {"by": "hot", "name": "other"}


def _counted(r: Running) -> dict[tuple[str, str, str], float]:
    text = httpx.get(r.url + "/metrics").text
    counts = {}
    for m in re.finditer(
        r'^mqttpush_http_requests_total\{method="(\w+)",route="([^"]+)",status="(\w+)"\} (\S+)$', text, re.M
    ):
        counts[(m.group(1), m.group(2), m.group(3))] = float(m.group(4))
    return counts


def test_hot_path_requests_are_counted_in_the_http_metrics(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    before = _counted(r)
    body = _push(device)
    for _ in range(3):
        headers = signing.signed_headers(r.app_key, r.app_secret, "POST", PUSH, body, time.time())
        assert httpx.post(r.url + PUSH, content=body, headers=headers).status_code == 202
    headers = signing.signed_headers(r.app_key, r.app_secret, "POST", PUSH, b"{", time.time())
    assert httpx.post(r.url + PUSH, content=b"{", headers=headers).status_code == 400
    quick = f"{PUSH}/device/{device}"
    headers = signing.signed_headers(r.app_key, r.app_secret, "POST", quick, b"hi", time.time())
    assert httpx.post(r.url + quick, content=b"hi", headers=headers).status_code == 202
    after = _counted(r)

    def moved(key: tuple[str, str, str]) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved(("POST", PUSH, "2xx")) == 3
    assert moved(("POST", PUSH, "4xx")) == 1
    assert moved(("POST", "/api/v1/push/device/{device_id}", "2xx")) == 1
    assert (
        f'mqttpush_http_request_seconds_count{{method="POST",route="{PUSH}"}}'
        in httpx.get(r.url + "/metrics").text
    )
