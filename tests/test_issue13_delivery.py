"""Issue 13 as a user meets it: a push over the HTTP API, a device over MQTT, ``status`` over the
API. Item 2 (TTL at the moment of delivery), 7 (a dead vendor token under the default strategy),
8 (channel and attempts of vendor sends), 9 (the history reads forward), 12 (a restart re-checks
quiet hours)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from queue import Queue
from typing import Any

from mqttpush import ids
from mqttpush.clock import ManualClock
from mqttpush.device import DeviceClient
from mqttpush.envelope import Envelope
from mqttpush.store import Store
from tests.conftest import Running, _serve, serving_apns


def _status(r: Running, msg_id: str) -> dict[str, Any]:
    with r.client() as c:
        (d,) = c.message(msg_id)["deliveries"]
        return dict(d)


def _wait_receipts(r: Running, count: int) -> None:
    r.call(asyncio.wait_for(r.server.receipts.wait_handled(count), 10), 11)


# --- item 2 ---------------------------------------------------------------------------------------


def test_ttl_holds_when_the_device_connects_after_it(clocked: Running) -> None:
    """``push --ttl 2``, connect 4 s later: not shown, not ``arrived``; a receipt anyway keeps it expired."""
    r = clocked
    clock = r.server.clock
    assert isinstance(clock, ManualClock)
    ((device, token),) = r.register()
    late = r.push([device], policy={"ttl": 2})
    r.call(r.server.dispatcher.drained())

    async def four_seconds_later() -> None:  # no TTL sweep has run yet
        clock.advance(4)

    r.call(four_seconds_later())
    got: Queue[dict[str, Any]] = Queue()
    client = DeviceClient.from_server(r.url, device, token, on_message=got.put, now=clock.now)
    client.connect()
    try:
        fresh = r.push([device])
        # The retained expired copy came first on SUBSCRIBE; the device dropped it.
        assert got.get(timeout=10)["id"] == fresh
        r.wait_state(fresh, device, "arrived")
        assert _status(r, late)["state"] == "published"  # no "arrived" for the late one

        client.arrived(late)  # a device that ignores expires_at acknowledges it anyway
        d = r.wait_state(late, device, "expired")
        assert [h["state"] for h in d["history"]] == ["accepted", "published", "expired"]
    finally:
        client.disconnect()
    assert got.empty()


# --- items 7 and 8: APNs through the local fake ------------------------------------------------------

GOOD = "a" * 64
DEAD = "b" * 64


async def _push_settled(r: Running, device: str, **policy: Any) -> str:
    def go() -> str:
        with r.client() as c:
            return str(
                c.push({"target": {"devices": [device]}, "notification": {"title": "Hi"}, "policy": policy})[
                    "msg_id"
                ]
            )

    msg_id = await asyncio.to_thread(go)
    await asyncio.to_thread(r.call, r.server.dispatcher.drained())
    await asyncio.to_thread(r.call, r.server.bridge.vendors.drained())
    return msg_id


async def test_dead_apns_token_leaves_the_message_in_the_mqtt_inbox(running: Running, tmp_path: Path) -> None:
    r = running
    async with serving_apns(r, tmp_path, retry_after="0") as fake:
        fake.bad.add(DEAD)
        ((device, token),) = r.register(platform="ios")
        with r.client() as c:
            c.set_vendor_token(device, "apns", DEAD)
        msg_id = await _push_settled(r, device, ttl=600)  # offline: the default strategy tries APNs
        assert fake.answers == [(400, "BadDeviceToken")]
        d = await asyncio.to_thread(_status, r, msg_id)
        assert (d["state"], d["channel"], d["attempts"]) == ("published", "apns,mqtt", 2)
        assert [h["state"] for h in d["history"]] == ["accepted", "published"]
        assert "apns: BadDeviceToken" in d["history"][-1]["detail"]

        got: Queue[dict[str, Any]] = Queue()
        client = DeviceClient.from_server(r.url, device, token, on_message=got.put)
        await asyncio.to_thread(client.connect)
        try:
            assert (await asyncio.to_thread(got.get, True, 10))["id"] == msg_id
            await asyncio.to_thread(r.wait_state, msg_id, device, "arrived")
        finally:
            await asyncio.to_thread(client.disconnect)


async def test_status_shows_the_vendor_channel_and_the_attempts(running: Running, tmp_path: Path) -> None:
    r = running
    async with serving_apns(r, tmp_path, retry_after="0") as fake:
        (retried, _), (dead, _) = r.register(2, platform="ios")
        with r.client() as c:
            c.set_vendor_token(retried, "apns", GOOD)
            c.set_vendor_token(dead, "apns", DEAD)
        fake.unavailable_once.add(GOOD)  # 503, then 200
        fake.bad.add(DEAD)

        d = await asyncio.to_thread(_status, r, await _push_settled(r, retried, strategy="vendor"))
        assert (d["state"], d["channel"], d["attempts"]) == ("forwarded", "apns", 2)
        d = await asyncio.to_thread(_status, r, await _push_settled(r, dead, strategy="vendor"))
        assert (d["state"], d["channel"], d["attempts"]) == ("failed", "apns", 1)
        assert (d["error"] or "").startswith("apns: BadDeviceToken")


# --- item 9 -----------------------------------------------------------------------------------------


def test_listen_opened_history_reads_forward(running: Running) -> None:
    """As ``device listen --opened``: "opened" from on_message, then the automatic "arrived"."""
    r = running
    ((device, token),) = r.register()
    got: Queue[dict[str, Any]] = Queue()

    def on_message(env: dict[str, Any]) -> None:
        client.opened(env["id"])
        got.put(env)

    client = DeviceClient.from_server(r.url, device, token, on_message=on_message)
    client.connect()
    try:
        before = r.server.receipts.handled
        msg_id = r.push([device])
        assert got.get(timeout=10)["id"] == msg_id
        _wait_receipts(r, before + 2)  # opened, then arrived
    finally:
        client.disconnect()
    d = _status(r, msg_id)
    assert d["state"] == "opened"
    assert [h["state"] for h in d["history"]] == ["accepted", "published", "arrived", "opened"]


# --- item 12 ----------------------------------------------------------------------------------------


def _committed_before_a_crash(data_dir: Path, clock: ManualClock, policy: dict[str, Any]) -> tuple[Any, ...]:
    """What the intake commits before answering 202, left unpublished by a process that died."""
    store = Store(data_dir, clock)
    app = store.apps.create_app("crashed")
    reg = store.devices.register_device(app.app_key, "phone", "android")
    now = clock.now()
    msg_id = ids.new_msg_id(now)
    envelope = Envelope(msg_id, app.app_key, "notification", "Hi", None, {}, now, now + policy["ttl"])
    store.messages.accept_message(
        msg_id=msg_id,
        app_key=app.app_key,
        kind="devices",
        target={"devices": [reg.device_id]},
        envelope=envelope.encode(),
        policy=policy,
        expires_at=now + policy["ttl"],
        device_ids=[reg.device_id],
    )
    store.close()
    return app, reg, msg_id


def test_restart_holds_a_recovered_push_until_quiet_hours_end(tmp_path: Path) -> None:
    clock = ManualClock()  # 08:00 UTC, the device's zone
    data_dir = tmp_path / "data"
    policy = {"ttl": 86400, "quiet_hours": {"start": "07:00", "end": "09:00"}}
    app, reg, msg_id = _committed_before_a_crash(data_dir, clock, policy)

    serving = _serve(data_dir, clock)
    r = next(serving)
    try:
        r.app_key, r.app_secret = app.app_key, app.secret
        r.call(r.server.dispatcher.drained())
        d = _status(r, msg_id)
        assert (d["state"], d["history"][-1].get("detail")) == ("queued", "quiet_hours")
        assert not [t for t in r.server.broker.retained_topics() if t.endswith(msg_id)]

        got: Queue[dict[str, Any]] = Queue()
        client = DeviceClient.from_server(r.url, reg.device_id, reg.device_token, on_message=got.put)
        client.connect()
        try:
            r.advance(3600)  # 09:00: the quiet hours are over
            assert got.get(timeout=10)["id"] == msg_id
            r.wait_state(msg_id, reg.device_id, "arrived")
        finally:
            client.disconnect()
    finally:
        for _ in serving:  # stops the server
            pass
