"""After a fuzzer: the server still serves a device (register, push, receive over MQTT)."""

from __future__ import annotations

import asyncio
import json

from mqttpush import topics
from tests.conftest import Running
from tests.mqtt_raw import RawClient


async def serves_a_device(r: Running, timeout: float = 10.0) -> None:
    """Register a new device over HTTP, connect it over MQTT, push to it and see the message arrive."""
    ((device, token),) = await asyncio.to_thread(r.register)
    client, code, _ = await RawClient.connect(r.mqtt_port, device, device, token, timeout=timeout)
    try:
        assert code == 0, f"CONNACK {code}"
        assert await client.subscribe(topics.inbox_filter(r.app_key, device), timeout=timeout) == [1]
        msg_id = await asyncio.to_thread(r.push, [device], "still here", "after the fuzzer")
        publish = await client.next_publish(timeout)
        assert publish is not None, "no message arrived"
        assert json.loads(publish.payload)["id"] == msg_id
    finally:
        await client.disconnect()
