"""The Python clients against the real server: PushClient and AsyncPushClient, signing and app
access tokens, the quick form, typed refusals, and the CLI's ``--token`` (docs/api.md, "Clients").
Retries are in tests/api/test_client_retries.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from queue import Queue
from typing import Any

import pytest

from mqttpush.client import AsyncPushClient, PushClient
from mqttpush.device import DeviceClient
from mqttpush.errors import ClientError
from tests.conftest import Running, cli, cli_json


def _token(r: Running, scope: str = "push") -> str:
    """An app access token made by the server's own store."""
    store = r.server.store
    return str(r.call(store.run(store.tokens.create, r.app_key, scope)).token)


def _note(device: str, title: str) -> dict[str, Any]:
    return {"target": {"devices": [device]}, "notification": {"title": title, "body": "b"}}


def test_the_sync_client_pushes_signed_and_with_a_token(running: Running) -> None:
    r = running
    ((device, device_token),) = r.register()
    got: Queue[dict[str, Any]] = Queue()
    token = _token(r)
    listener = DeviceClient.from_server(r.url, device, device_token, on_message=got.put)
    listener.connect()
    try:
        with PushClient(r.url, r.app_key, r.app_secret) as signed, PushClient(r.url, token=token) as bearer:
            by_signature = signed.push(_note(device, "signed"))["msg_id"]
            by_token = bearer.push(_note(device, "token"))["msg_id"]
            quick = bearer.push_text(
                device,
                "a+b&c 100%",
                title="Grüße 🚀",
                priority="high",
                ttl="90m",
                data={"k": 1},
                biz_id="o-1",
            )["msg_id"]
            assert bearer.push_text(device, "again", biz_id="o-1")["msg_id"] == quick  # the same key
            envelopes = {e["id"]: e for e in (got.get(timeout=10) for _ in range(3))}
            assert envelopes[by_signature]["title"] == "signed" and envelopes[by_token]["title"] == "token"
            sent = envelopes[quick]
            assert (sent["title"], sent["body"], sent["data"]) == ("Grüße 🚀", "a+b&c 100%", {"k": 1})
            assert sent["expires_at"] - sent["sent_at"] == pytest.approx(5400, abs=1)
            assert bearer.message(quick)["priority"] == "high"
            assert signed.message(by_token)["deliveries"][0]["device_id"] == device
            assert got.empty()  # the repeated Biz-Id sent nothing
    finally:
        listener.disconnect()


async def test_the_async_client_has_the_same_routes_with_both_credentials(
    running: Running, tmp_path: Path
) -> None:
    r = running
    token = await asyncio.to_thread(_token, r)
    async with AsyncPushClient(r.url, r.app_key) as registrar:
        reg = await registrar.register_device("async-install", "android")
        assert (await registrar.register_device("async-install", "android"))["device_id"] == reg["device_id"]
    device = reg["device_id"]
    async with (
        AsyncPushClient(r.url, r.app_key, r.app_secret) as signed,
        AsyncPushClient(r.url, token=token) as bearer,
    ):
        assert await signed.update_tags(device, add=["vip"]) == ["vip"]
        assert await signed.bind_alias(device, "u 42/x") == [{"alias": "u 42/x", "alias_type": "user"}]
        to_alias = await bearer.push_text({"alias": "u 42/x", "alias_type": "user"}, "to the alias")
        to_tag = await bearer.push_text({"tags": "vip and not staff"}, "to a tag", title="t")
        assert set(to_alias) == {"msg_id"} and set(to_tag) == {"task_id", "msg_id"}
        ids = tmp_path / "ids.txt"
        ids.write_text(f"{device}\n")
        uploaded = await signed.upload_file(ids)  # streamed, signed over its SHA-256
        assert uploaded["lines"] == 1
        by_file = await bearer.push(
            {"target": {"file_id": uploaded["file_id"]}, "notification": {"title": "f"}}
        )
        batch = await signed.push_batch({"items": [{"device": device}], "notification": {"title": "b"}})
        assert len(batch) == 1
        status = await bearer.message(to_alias["msg_id"])
        assert [d["device_id"] for d in status["deliveries"]] == [device]
        assert (await bearer.task(to_tag["task_id"]))["task_id"] == to_tag["task_id"]
        listed = {m["msg_id"] for m in await bearer.messages()}
        assert {to_alias["msg_id"], to_tag["msg_id"], batch[0]} <= listed
        assert by_file  # a msg_id or a task_id: accepted
        assert (await signed.device(device))["tags"] == ["vip"]


def test_refusals_are_typed_and_missing_credentials_are_named(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    with PushClient(r.url, token=_token(r, "read")) as reader, pytest.raises(ClientError) as below_scope:
        reader.push(_note(device, "no"))
    assert (below_scope.value.code, below_scope.value.status) == ("insufficient_scope", 403)
    assert below_scope.value.retry_after is None
    with PushClient(r.url, r.app_key) as key_only, pytest.raises(ClientError) as no_secret:
        key_only.push(_note(device, "no"))
    assert no_secret.value.code == "missing_secret" and "--app-secret" in no_secret.value.message
    with PushClient(r.url, token=_token(r)) as bearer:
        with pytest.raises(ClientError) as no_key:
            bearer.register_device("i", "android")
        assert no_key.value.code == "missing_app_key" and "--app-key" in no_key.value.message
        with pytest.raises(ClientError) as not_quick:
            bearer.push_text({"filter": {"platform": "ios"}}, "x")
        assert not_quick.value.code == "bad_quick_target"
        with pytest.raises(ClientError) as unknown:
            bearer.message("01nosuchmessage0000000000")
        assert (unknown.value.code, unknown.value.status) == ("unknown_message", 404)


def test_the_cli_takes_a_token_for_key_and_secret(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    token = _token(r)
    pushed = cli_json("push", "--url", r.url, "--token", token, "--device", device, "--title", "by token")
    status = cli("status", pushed["msg_id"], "--url", r.url, "--json", env={"MQTTPUSH_TOKEN": token})
    assert status.returncode == 0, status.stderr
    assert '"device_id": "' + device in status.stdout

    no_secret = cli("push", "--url", r.url, "--app-key", r.app_key, "--device", device, "--title", "x")
    assert no_secret.returncode == 2 and "--app-secret" in no_secret.stderr and "--token" in no_secret.stderr
    no_key = cli("push", "--url", r.url, "--device", device, "--title", "x")
    assert no_key.returncode == 2 and "--app-key" in no_key.stderr
    not_a_token = cli("push", "--url", r.url, "--token", r.app_secret, "--device", device, "--title", "x")
    assert not_a_token.returncode == 2 and "--token" in not_a_token.stderr
    reader = cli("push", "--url", r.url, "--token", _token(r, "read"), "--device", device, "--title", "x")
    assert reader.returncode == 2 and "[insufficient_scope]" in reader.stderr
    admin = _token(r, "admin")  # webhook add has [auth] of its own (two --url flags): the token too
    hook = cli_json(
        "webhook",
        "add",
        "--url",
        r.url,
        "--url",
        "http://127.0.0.1:9/h",
        "--token",
        admin,
        "--event",
        "alarm",
    )
    assert hook["webhook_id"] and hook["secret"]
    for proc in (no_secret, no_key, not_a_token, reader):
        assert "Traceback" not in proc.stderr
