"""The MQTT publish API (docs/targeting.md): an app's server pushes over MQTT with its key and secret."""

from __future__ import annotations

import json

from mqttpush.client import PushClient
from mqttpush.store import Store
from tests.conftest import Running
from tests.mqtt_raw import RawClient


async def test_push_request_over_mqtt_gets_its_result(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    app, code, _ = await RawClient.connect(r.mqtt_port, "shop-backend", r.app_key, r.app_secret)
    assert code == 0
    assert await app.subscribe(f"mqttpush/{r.app_key}/api/result/+") == [1]
    # an app identity is confined to its own API topics
    assert await app.subscribe(
        f"mqttpush/{r.app_key}/d/{device}/m/+", "mqttpush/#", "mqttpush/other/api/result/+"
    ) == [0x80, 0x80, 0x80]

    request = {"request_id": "req-1", "target": {"devices": [device]}, "notification": {"title": "over mqtt"}}
    app.publish(f"mqttpush/{r.app_key}/api/push", json.dumps(request).encode(), qos=1)
    result = await app.next_publish(10)
    assert result is not None and result.topic == f"mqttpush/{r.app_key}/api/result/req-1"
    doc = json.loads(result.payload)
    assert set(doc) == {"request_id", "msg_id"} and doc["request_id"] == "req-1"

    dev, _, _ = await RawClient.connect(r.mqtt_port, device, device, token)
    await dev.subscribe(f"mqttpush/{r.app_key}/d/{device}/m/+")
    got = await dev.next_publish(10)
    assert got is not None and json.loads(got.payload)["id"] == doc["msg_id"]

    bad = {
        "request_id": "req-2",
        "target": {"devices": ["dnosuchdevice00000000"]},
        "notification": {"title": "x"},
    }
    app.publish(f"mqttpush/{r.app_key}/api/push", json.dumps(bad).encode(), qos=1)
    invalid = {"request_id": "req-3", "target": {"devices": [device]}, "notification": {"title": 5}}
    app.publish(f"mqttpush/{r.app_key}/api/push", json.dumps(invalid).encode(), qos=1)
    app.publish(f"mqttpush/{r.app_key}/api/push", b"{not json", qos=1)  # no request_id: dropped, logged
    errors = {}
    for _ in range(2):
        p = await app.next_publish(10)
        assert p is not None
        body = json.loads(p.payload)
        errors[body["request_id"]] = body["error"]["code"]
    assert errors == {"req-2": "unknown_device", "req-3": "invalid_request"}
    await app.disconnect()
    await dev.disconnect()


async def test_app_credentials_are_checked_and_apps_stay_apart(running: Running) -> None:
    r = running
    c, code, _ = await RawClient.connect(r.mqtt_port, "x", r.app_key, r.app_secret + "x")
    assert code == 5
    await c.close()
    other = Store(r.data_dir).apps.create_app("other")
    with PushClient(r.url, other.app_key) as api:
        theirs = api.register_device("their-phone", "ios")["device_id"]
    mine, _, _ = await RawClient.connect(r.mqtt_port, "mine", r.app_key, r.app_secret)
    them, _, _ = await RawClient.connect(r.mqtt_port, "them", other.app_key, other.secret)
    assert await them.subscribe(f"mqttpush/{other.app_key}/api/result/+") == [1]
    # A request smuggled into the other app's topic is dropped by the ACL...
    forged = {"request_id": "forged", "target": {"devices": [theirs]}, "notification": {"title": "x"}}
    mine.publish(f"mqttpush/{other.app_key}/api/push", json.dumps(forged).encode(), qos=1)
    # ...so the other app's first result is for its own request.
    own = {"request_id": "own", "target": {"devices": [theirs]}, "notification": {"title": "y"}}
    them.publish(f"mqttpush/{other.app_key}/api/push", json.dumps(own).encode(), qos=1)
    first = await them.next_publish(10)
    assert first is not None and json.loads(first.payload)["request_id"] == "own"
    assert await them.collect(0.5) == []
    await mine.disconnect()
    await them.disconnect()
