"""``GET /readyz`` covers the embedded broker (docs/api.md, "Health"): a listener that stops
accepting MQTT connections makes the server not ready."""

from __future__ import annotations

import httpx

from tests.conftest import Running


def test_readyz_says_broker_when_its_mqtt_listener_stops(running: Running) -> None:
    r = running
    assert httpx.get(f"{r.url}/readyz").json() == {"ready": True}

    async def close_listener() -> None:
        r.server.broker._servers["default"].instance.close()  # is_serving() is False from here

    r.call(close_listener())
    answer = httpx.get(f"{r.url}/readyz")
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "not_ready"
    assert "default" in error["parts"]["broker"]
    assert httpx.get(f"{r.url}/healthz").json()["ok"] is True  # alive, only not ready
