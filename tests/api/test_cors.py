"""A web page on another origin may register its browser as a device (docs/api.md): the preflight
of ``POST /api/v1/devices`` is answered and its answers, errors included, allow any origin; no
other route does (examples/browser/ relies on the first, the console on the second)."""

from __future__ import annotations

import httpx

from tests.conftest import Running

PAGE = "http://127.0.0.1:1"  # some other origin


def test_registration_preflight_and_answers_allow_any_origin(running: Running) -> None:
    r = running
    url = r.url + "/api/v1/devices"
    pre = httpx.options(
        url,
        headers={
            "Origin": PAGE,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-mqttpush-key",
        },
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "*"
    assert pre.headers["access-control-allow-methods"] == "POST"
    allowed = {h.strip().lower() for h in pre.headers["access-control-allow-headers"].split(",")}
    assert {"content-type", "x-mqttpush-key"} <= allowed

    body = {"install_id": "browser-1", "platform": "web"}
    ok = httpx.post(url, json=body, headers={"Origin": PAGE, "X-MQTTPush-Key": r.app_key})
    assert ok.status_code == 201 and ok.json()["device_id"]
    assert ok.headers["access-control-allow-origin"] == "*"

    refused = httpx.post(url, json=body, headers={"Origin": PAGE, "X-MQTTPush-Key": "anothers"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unknown_app"
    assert refused.headers["access-control-allow-origin"] == "*"


def test_other_routes_stay_same_origin(running: Running) -> None:
    r = running
    for path in ("/api/v1/push", "/api/v1/devices/me", "/console/api/session"):
        pre = httpx.options(r.url + path, headers={"Origin": PAGE, "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 405, path
        assert "access-control-allow-origin" not in pre.headers, path
    signed = httpx.post(r.url + "/api/v1/push", json={}, headers={"Origin": PAGE})
    assert signed.status_code == 401
    assert "access-control-allow-origin" not in signed.headers
    # Without a preflight header an OPTIONS is an ordinary request: 405 as before.
    plain = httpx.options(r.url + "/api/v1/devices")
    assert plain.status_code == 405 and "POST" in plain.headers["allow"]
