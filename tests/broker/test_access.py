"""Broker authentication and ACL (docs/protocol.md), seen from raw MQTT clients."""

from __future__ import annotations

import asyncio
import json

from mqttpush.client import PushClient
from mqttpush.errors import ClientError
from mqttpush.store import Store
from tests.conftest import Running
from tests.mqtt_raw import RawClient

QUIET = 0.5  # how long "nothing arrives" is watched for


async def test_wrong_token_is_refused_at_connect(running: Running) -> None:
    ((device, token),) = running.register()
    for client_id, user, password in [
        (device, device, token + "x"),
        (device, device, None),
        (device, None, None),
        ("other", device, token),  # client id must equal the device id
        (device, "mqttpush-service", "guess"),
    ]:
        c, code, present = await RawClient.connect(running.mqtt_port, client_id, user, password)
        assert (code, present) == (5, False), (client_id, user, password)
        assert await c.closed_by_server(5)
    ok, code, _ = await RawClient.connect(running.mqtt_port, device, device, token)
    assert code == 0
    await ok.disconnect()


async def test_failed_connect_does_not_disturb_the_real_device(running: Running) -> None:
    """amqtt dropped the session of a client id before checking the password."""
    r = running
    ((device, token),) = r.register()
    real, code, _ = await RawClient.connect(r.mqtt_port, device, device, token)
    assert code == 0
    assert await real.subscribe(f"mqttpush/{r.app_key}/d/{device}/m/+") == [1]
    _intruder, code, _ = await RawClient.connect(r.mqtt_port, device, device, "wrong", clean=True)
    assert code == 5
    msg_id = await asyncio.to_thread(r.push, [device])
    got = await real.next_publish(10)
    assert got is not None and json.loads(got.payload)["id"] == msg_id
    await real.disconnect()


async def test_other_inbox_subscription_refused_and_nothing_leaks(running: Running) -> None:
    r = running
    (victim, _), (spy, spy_token) = r.register(2)
    await asyncio.to_thread(r.push, [victim], "secret")  # retained in the victim's inbox
    c, code, _ = await RawClient.connect(r.mqtt_port, spy, spy, spy_token)
    assert code == 0
    codes = await c.subscribe(
        f"mqttpush/{r.app_key}/d/{victim}/m/+",
        f"mqttpush/{r.app_key}/d/+/m/+",
        "mqttpush/#",
        "#",
        f"mqttpush/{r.app_key}/d/{victim}/r",
    )
    assert codes == [0x80] * 5
    assert await c.subscribe(f"mqttpush/{r.app_key}/d/{spy}/m/+", f"mqttpush/{r.app_key}/b/+") == [1, 1]
    await asyncio.to_thread(r.push, [victim], "live secret")  # live, while the spy is subscribed
    mine = await asyncio.to_thread(r.push, [spy], "for the spy")
    got = await c.collect(QUIET)
    assert [json.loads(p.payload)["id"] for p in got] == [mine]
    await c.disconnect()


async def test_device_publishes_only_its_own_receipt_and_presence(running: Running) -> None:
    r = running
    (victim, victim_token), (rogue, rogue_token) = r.register(2)
    msg_id = await asyncio.to_thread(r.push, [victim])
    await asyncio.to_thread(r.call, r.server.dispatcher.drained())
    c, _, _ = await RawClient.connect(r.mqtt_port, rogue, rogue, rogue_token)
    handled = r.server.receipts.handled
    # A forged receipt for the victim, and a forged inbox message: both dropped by the ACL.
    c.publish(
        f"mqttpush/{r.app_key}/d/{victim}/r", json.dumps({"id": msg_id, "event": "opened"}).encode(), qos=1
    )
    c.publish(f"mqttpush/{r.app_key}/d/{victim}/m/fake", b'{"id": "fake"}', qos=1, retain=True)
    # Its own receipt for a message it never got is stored as unknown and ignored.
    c.publish(
        f"mqttpush/{r.app_key}/d/{rogue}/r", json.dumps({"id": msg_id, "event": "opened"}).encode(), qos=1
    )
    await asyncio.to_thread(r.call, asyncio.wait_for(r.server.receipts.wait_handled(handled + 1), 10))
    assert r.server.receipts.handled == handled + 1
    with r.client() as api:
        assert [d["state"] for d in api.message(msg_id)["deliveries"]] == ["published"]
    v, _, _ = await RawClient.connect(r.mqtt_port, victim, victim, victim_token)
    await v.subscribe(f"mqttpush/{r.app_key}/d/{victim}/m/+")
    got = await v.collect(QUIET)
    assert [json.loads(p.payload)["id"] for p in got] == [msg_id]
    await c.disconnect()
    await v.disconnect()


async def test_devices_of_another_app_are_strangers(running: Running) -> None:
    r = running
    other = Store(r.data_dir).apps.create_app("other")
    ((device, _),) = r.register()
    with PushClient(r.url, other.app_key, other.secret) as c:
        try:
            c.push({"target": {"devices": [device]}, "notification": {"title": "x"}})
        except ClientError as exc:
            assert (exc.status, exc.code) == (404, "unknown_device")
        else:
            raise AssertionError("pushed to another app's device")


async def test_service_credentials_reach_everything_under_mqttpush(running: Running) -> None:
    r = running
    user, password = Store(r.data_dir).accounts.service_credentials()
    ((device, token),) = r.register()
    svc, code, _ = await RawClient.connect(r.mqtt_port, "bridge-1", user, password)
    assert code == 0
    assert await svc.subscribe("mqttpush/+/d/+/r", "$SYS/#") == [1, 0x80]
    d, _, _ = await RawClient.connect(r.mqtt_port, device, device, token)
    d.publish(f"mqttpush/{r.app_key}/d/{device}/r", b'{"id": "x", "event": "arrived"}', qos=1)
    got = await svc.next_publish(10)
    assert got is not None and got.topic == f"mqttpush/{r.app_key}/d/{device}/r"
    await svc.disconnect()
    await d.disconnect()


async def test_presence_follows_connection_and_will(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    store = Store(r.data_dir)
    c, _, _ = await RawClient.connect(
        r.mqtt_port, device, device, token, will=(f"mqttpush/{r.app_key}/d/{device}/s", b"offline", 1, True)
    )
    await c.subscribe(f"mqttpush/{r.app_key}/d/{device}/m/+")  # a round trip: CONNECT fully handled
    await asyncio.to_thread(r.call, r.server.presence_idle())
    seen = store.devices.get_device(device)
    assert seen is not None and seen.online and seen.last_seen is not None
    await c.close()  # no DISCONNECT: abnormal end, the Will is published
    svc_user, svc_pw = store.accounts.service_credentials()
    svc, _, _ = await RawClient.connect(r.mqtt_port, "watcher", svc_user, svc_pw)
    await svc.subscribe(f"mqttpush/{r.app_key}/d/{device}/s")
    will = await svc.next_publish(10)
    assert will is not None and (will.payload, will.retain) == (b"offline", True)
    await asyncio.to_thread(r.call, r.server.presence_idle())
    gone = store.devices.get_device(device)
    assert gone is not None and not gone.online
    await svc.disconnect()
