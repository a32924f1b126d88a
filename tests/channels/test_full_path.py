"""Issue 6 acceptance through the whole path: API → router → dispatcher → vendor channel →
local fake vendor over TLS HTTP/2, with the outcome stored on the delivery."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path
from queue import Queue
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mqttpush.device import DeviceClient
from mqttpush.store import Store
from tests.conftest import Running, cli, serving_apns
from tests.fakes.fcm import FakeFcm, write_service_account
from tests.fakes.hms import FakeHms
from tests.fakes.mipush import FakeMiPush
from tests.fakes.tls import tls_server
from tests.fakes.webpush import FakePushService

APNS_TOKEN = "a" * 64
FCM_TOKEN = "fcm-token-" + "x" * 140


async def _settle(r: Running) -> None:
    await asyncio.to_thread(r.call, r.server.dispatcher.drained())
    await asyncio.to_thread(r.call, r.server.bridge.vendors.drained())


async def _push(r: Running, device: str, **policy: Any) -> str:
    def go() -> str:
        with r.client() as c:
            return str(
                c.push(
                    {
                        "target": {"devices": [device]},
                        "notification": {"title": "Sale", "body": "50%"},
                        "data": {"sku": 42},
                        "policy": policy,
                    }
                )["msg_id"]
            )

    msg_id = await asyncio.to_thread(go)
    await _settle(r)
    return msg_id


async def _hang_up(r: Running) -> None:
    """Close the server's vendor connections before a fake stops (else its TLS shutdown waits)."""
    await asyncio.to_thread(r.call, r.server.bridge.vendors.close())


async def _delivery(r: Running, msg_id: str) -> dict[str, Any]:
    def go() -> dict[str, Any]:
        with r.client() as c:
            return dict(c.message(msg_id)["deliveries"][0])

    return await asyncio.to_thread(go)


async def test_apns_full_path_payload_and_dead_token(running: Running, tmp_path: Path) -> None:
    r = running
    async with serving_apns(r, tmp_path) as fake:
        ((device, _),) = r.register(platform="ios")
        with r.client() as c:
            c.set_vendor_token(device, "apns", APNS_TOKEN)
        msg_id = await _push(r, device)
        d = await _delivery(r, msg_id)
        assert (d["state"], d["channel"]) == ("forwarded", "apns")
        (note,) = fake.received
        assert note.device_token == APNS_TOKEN and note.http_version == "2"
        assert note.headers["apns-topic"] == "com.example.app"
        assert note.payload["aps"]["alert"] == {"title": "Sale", "body": "50%"}
        assert msg_id in json.dumps(note.payload)  # the device can de-duplicate against MQTT

        fake.unregistered.add(APNS_TOKEN)
        gone = await _push(r, device)
        d = await _delivery(r, gone)
        # mqtt_else_vendor: the vendor refused, so the message waits in the device's MQTT inbox.
        assert (d["state"], d["channel"]) == ("published", "apns,mqtt")
        assert "BadDeviceToken" in d["history"][-1]["detail"] or "Unregistered" in d["history"][-1]["detail"]
        assert Store(r.data_dir).devices.vendor_tokens(device) == []  # the dead token left the registry
        with r.client() as c:
            assert c.vendors()["counters"]["apns"]["dropped_tokens"] == 1


async def test_fcm_strategies_offline_online_vendor_first_vendor(running: Running, tmp_path: Path) -> None:
    r = running
    fake: FakeFcm | None = None
    holder: dict[str, Any] = {}

    async with tls_server(_Lazy(holder)) as (base_url, ca_file):
        key = write_service_account(tmp_path / "sa.json", token_uri=f"{base_url}/token")
        fake = FakeFcm(
            project_id="mqttpush-test",
            client_email="push@mqttpush-test.iam.gserviceaccount.com",
            public_key=key.public_key(),
        )
        holder["app"] = fake
        r.configure_vendor(
            "fcm", {"service_account_file": "sa.json", "base_url": base_url, "ca_file": ca_file}, tmp_path
        )
        ((device, token),) = r.register(platform="android")
        with r.client() as c:
            c.set_vendor_token(device, "fcm", FCM_TOKEN)

        # offline on MQTT: the default strategy forwards through FCM
        offline = await _push(r, device)
        d = await _delivery(r, offline)
        assert (d["state"], d["channel"]) == ("forwarded", "fcm")
        assert len(fake.received) == 1

        # online: MQTT only
        got: Queue[dict[str, Any]] = Queue()
        client = DeviceClient.from_server(r.url, device, token, on_message=got.put)
        await asyncio.to_thread(client.connect)
        try:
            await asyncio.to_thread(r.call, r.server.presence_idle())
            online = await _push(r, device)
            assert (await asyncio.to_thread(got.get, True, 10))["id"] == online
            d = await _delivery(r, online)
            assert d["channel"] == "mqtt" and len(fake.received) == 1

            both = await _push(r, device, strategy="vendor_first")
            assert (await asyncio.to_thread(got.get, True, 10))["id"] == both
            assert len(fake.received) == 2
            assert (await _delivery(r, both))["channel"] == "fcm,mqtt"

            only_vendor = await _push(r, device, strategy="vendor")
            assert len(fake.received) == 3
            assert (await _delivery(r, only_vendor))["channel"] == "fcm"
            assert await asyncio.to_thread(lambda: got.empty())

            ((tokenless, _),) = r.register(platform="android")
            nothing = await _push(r, tokenless, strategy="vendor")
            d = await _delivery(r, nothing)
            assert (d["state"], d["error"]) == ("failed", "no_vendor_token")
        finally:
            await asyncio.to_thread(client.disconnect)
            await _hang_up(r)


async def test_hms_mipush_webpush_full_path(running: Running, tmp_path: Path) -> None:
    r = running
    hms, mipush, webpush = FakeHms(), FakeMiPush(), FakePushService()
    async with (
        tls_server(hms.app) as (hms_url, hms_ca),
        tls_server(mipush.app) as (mi_url, mi_ca),
        tls_server(webpush.app) as (wp_url, wp_ca),
    ):
        hms_obj = hms.vendor_config(hms_url, hms_ca)
        r.configure_vendor("hms", hms_obj, tmp_path)
        r.configure_vendor("mipush", mipush.vendor_config(mi_url, mi_ca), tmp_path)
        r.configure_vendor("webpush", {"subject": "mailto:ops@example.com", "ca_file": wp_ca}, tmp_path)
        (huawei, _), (xiaomi, _), (browser, _) = (
            r.register(platform="android")[0],
            r.register(platform="android")[0],
            r.register(platform="web")[0],
        )
        browser_key = ec.generate_private_key(ec.SECP256R1())
        auth = os.urandom(16)
        webpush.subscribe("sub1", browser_key, auth)
        p256dh = browser_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        with r.client() as c:
            c.update_device(huawei, channel="huawei")
            c.update_device(xiaomi, channel="xiaomi")
            c.set_vendor_token(huawei, "hms", "hms-token-1")
            c.set_vendor_token(xiaomi, "mipush", "mi-regid-1")
            c.set_vendor_token(
                browser,
                "webpush",
                subscription={
                    "endpoint": f"{wp_url}/push/sub1",
                    "keys": {"p256dh": _b64(p256dh), "auth": _b64(auth)},
                },
            )
        for device, vendor in ((huawei, "hms"), (xiaomi, "mipush"), (browser, "webpush")):
            msg_id = await _push(r, device)
            d = await _delivery(r, msg_id)
            assert (d["state"], d["channel"]) == ("forwarded", vendor), d
        assert len(hms.messages) == 1 and len(mipush.messages) == 1
        (pushed,) = webpush.received
        envelope = json.loads(pushed.plaintext)  # the fake browser decrypted it (RFC 8291)
        assert (envelope["title"], envelope["data"]) == ("Sale", {"sku": 42})
        await _hang_up(r)


def test_vendor_cli_config_and_vapid(running: Running, tmp_path: Path) -> None:
    r = running
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"apns": {"team_id": "T"}}))
    proc = cli("app", "vendor", "set", r.app_key, "--data-dir", str(r.data_dir), "--config", str(bad))
    assert proc.returncode == 2 and "bad_vendor_config" in proc.stderr
    vapid = cli("app", "vapid", r.app_key, "--data-dir", str(r.data_dir), "--json")
    assert vapid.returncode == 0, vapid.stderr
    public_key = json.loads(vapid.stdout)["public_key"]
    again = json.loads(cli("app", "vapid", r.app_key, "--data-dir", str(r.data_dir), "--json").stdout)
    assert again["public_key"] == public_key  # generated once
    import httpx

    from mqttpush import signing

    served = httpx.get(f"{r.url}/api/v1/webpush/key", headers={signing.KEY_HEADER: r.app_key}).json()
    assert served == {"public_key": public_key}
    assert "PRIVATE" not in vapid.stdout


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class _Lazy:
    """An ASGI app whose real app is set once its URL is known (FCM's token_uri points at itself)."""

    def __init__(self, holder: dict[str, Any]) -> None:
        self._holder = holder

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        app = self._holder.get("app")
        if app is None:
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    elif message["type"] == "lifespan.shutdown":
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            return
        await app(scope, receive, send)


async def test_fcm_retry_then_delivered_and_auth_failure_alarm(running: Running, tmp_path: Path) -> None:
    r = running
    holder: dict[str, Any] = {}
    async with tls_server(_Lazy(holder)) as (base_url, ca_file):
        key = write_service_account(tmp_path / "sa.json", token_uri=f"{base_url}/token")
        fake = FakeFcm(
            project_id="mqttpush-test",
            client_email="push@mqttpush-test.iam.gserviceaccount.com",
            public_key=key.public_key(),
            retry_after="0",
        )
        holder["app"] = fake
        r.configure_vendor(
            "fcm", {"service_account_file": "sa.json", "base_url": base_url, "ca_file": ca_file}, tmp_path
        )
        (busy, _), (denied, _) = r.register(2, platform="android")
        with r.client() as c:
            c.set_vendor_token(busy, "fcm", FCM_TOKEN + "busy")
            c.set_vendor_token(denied, "fcm", FCM_TOKEN + "denied")
        fake.quota_once.add(FCM_TOKEN + "busy")  # 429 QUOTA_EXCEEDED, then fine: retried with backoff
        fake.third_party_auth.add(FCM_TOKEN + "denied")  # the app's APNs credentials in Firebase are bad
        retried = await _push(r, busy)
        d = await _delivery(r, retried)
        assert d["state"] == "forwarded" and d["attempts"] == 2  # the 429, then the send that went through
        assert [a for a in fake.answers if a[1] == "RESOURCE_EXHAUSTED" or a[0] == 429]
        refused = await _push(r, denied, strategy="vendor")
        d = await _delivery(r, refused)
        assert d["state"] == "failed" and (d["error"] or "").startswith("fcm: auth:")
        with r.client() as c:
            (alarm,) = c.vendors()["alarms"]
        assert alarm["vendor"] == "fcm"
        assert Store(r.data_dir).devices.vendor_tokens(denied) != []  # a credentials problem keeps the token
        await _hang_up(r)
