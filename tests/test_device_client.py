"""``mqttpush.device.DeviceClient`` against a real server."""

from __future__ import annotations

from queue import Queue
from typing import Any

import pytest

from mqttpush import topics
from mqttpush.device import DeviceClient
from mqttpush.errors import ClientError
from tests.conftest import Running


def test_receives_acknowledges_and_reports_opened(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    got: Queue[dict[str, Any]] = Queue()
    client = DeviceClient.from_server(r.url, device, token, on_message=got.put)
    client.connect()
    try:
        msg_id = r.push([device], title="Hello", body="there", data={"k": "v"})
        env = got.get(timeout=10)
        assert (env["id"], env["title"], env["body"], env["data"]) == (msg_id, "Hello", "there", {"k": "v"})
        r.wait_state(msg_id, device, "arrived")
        client.opened(msg_id)
        d = r.wait_state(msg_id, device, "opened")
        assert [h["state"] for h in d["history"]] == ["accepted", "published", "arrived", "opened"]
    finally:
        client.disconnect()


def test_duplicates_are_dropped_by_id(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    got: Queue[dict[str, Any]] = Queue()
    client = DeviceClient.from_server(r.url, device, token, on_message=got.put, auto_arrived=False)
    client.connect()
    try:
        first = r.push([device])
        assert got.get(timeout=10)["id"] == first
        # Subscribing again replays the still-retained message: the client must not show it twice.
        client._mqtt.subscribe(topics.inbox_filter(r.app_key, device), qos=1)
        second = r.push([device])
        assert got.get(timeout=10)["id"] == second
        assert got.empty()
    finally:
        client.disconnect()


def test_wrong_token_raises_a_clear_error(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    with pytest.raises(ClientError) as info:
        DeviceClient.from_server(r.url, device, token + "x")
    assert info.value.code == "bad_token"
    client = DeviceClient(
        host="127.0.0.1", port=r.mqtt_port, app_key=r.app_key, device_id=device, device_token="wrong"
    )
    with pytest.raises(ClientError) as info:
        client.connect(timeout=10)
    assert info.value.code == "mqtt_refused"
