"""Overload is visible (issue 14): past the publish-lag bound a push gets 503 ``overloaded``
with Retry-After, as JSON, and nothing is accepted; below it, pushes are accepted again."""

from __future__ import annotations

import time

import httpx

from mqttpush import signing
from tests.conftest import Running


def _signed_push(r: Running, device: str) -> httpx.Response:
    body = b'{"target": {"devices": ["%s"]}, "notification": {"title": "t"}}' % device.encode()
    headers = signing.signed_headers(r.app_key, r.app_secret, "POST", "/api/v1/push", body, time.time())
    return httpx.post(
        f"{r.url}/api/v1/push", content=body, headers=headers | {"Content-Type": "application/json"}
    )


def test_push_past_the_lag_bound_gets_503_with_retry_after(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    dispatcher = r.server.dispatcher
    behind = 2.4  # seconds the oldest accepted push has waited (the real figure needs a stuck broker)
    dispatcher.lag = lambda: behind  # type: ignore[method-assign]
    try:
        refused = _signed_push(r, device)
    finally:
        del dispatcher.lag
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "3"
    assert refused.json()["error"]["code"] == "overloaded"
    accepted = _signed_push(r, device)
    assert accepted.status_code == 202 and "msg_id" in accepted.json()
