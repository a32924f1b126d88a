"""Issue 13, item 2: ``DeviceClient`` drops a message whose ``expires_at`` has passed (no
``on_message``, no ``arrived``), judged by the clock it is given."""

from __future__ import annotations

import json
from typing import Any

import paho.mqtt.client as mqtt

from mqttpush import topics
from mqttpush.clock import ManualClock
from mqttpush.device import DeviceClient


def _client(clock: ManualClock) -> tuple[DeviceClient, list[dict[str, Any]], list[tuple[str, str]]]:
    shown: list[dict[str, Any]] = []
    receipts: list[tuple[str, str]] = []
    client = DeviceClient(
        host="127.0.0.1",
        port=1883,
        app_key="app1",
        device_id="dev1",
        device_token="token",
        on_message=shown.append,
        now=clock.now,
    )
    client._receipt = lambda msg_id, event: receipts.append((msg_id, event))  # type: ignore[method-assign]
    return client, shown, receipts


def _deliver(client: DeviceClient, msg_id: str, expires_at: float) -> None:
    msg = mqtt.MQTTMessage(topic=topics.inbox_topic("app1", "dev1", msg_id).encode())
    msg.payload = json.dumps({"id": msg_id, "app": "app1", "title": "t", "expires_at": expires_at}).encode()
    client._on_mqtt_message(client._mqtt, None, msg)


def test_a_message_in_time_is_shown_and_acknowledged() -> None:
    clock = ManualClock()
    client, shown, receipts = _client(clock)
    _deliver(client, "m1", clock.now() + 2)
    assert [m["id"] for m in shown] == ["m1"] and receipts == [("m1", "arrived")]


def test_an_expired_message_is_dropped_without_a_receipt() -> None:
    clock = ManualClock()
    client, shown, receipts = _client(clock)
    expires_at = clock.now() + 2
    clock.advance(4)  # `push --ttl 2`, connect 4 s later
    _deliver(client, "m1", expires_at)
    _deliver(client, "m2", clock.now())  # the very moment of expiry counts as expired
    assert shown == [] and receipts == []
