"""Xiaomi MiPush: credentials, the pure request builder and classifier, and real sends to the local
fake over TLS + HTTP/2."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.channels import mipush
from bridge.channels.base import (
    Delivered,
    DropToken,
    Fail,
    PayloadTooLargeForVendor,
    PushMessage,
    Retry,
    VendorResponse,
)
from mqttpush.errors import InvalidContent
from tests.fakes.mipush import FakeMiPush
from tests.fakes.tls import make_ca, tls_server

T = TypeVar("T")
REGID = "0dS8r1lJc2u4MiPushRegId+AbCdEf/123="
CREDS = mipush.MiPushCredentials(app_secret="s3cr3t==", package_name="com.example.push")


def envelope(kind: str = "notification", **extra: Any) -> dict[str, Any]:
    return {
        "id": "m1",
        "app": "app1",
        "type": kind,
        "title": "Hello",
        "body": "World",
        "data": {"k": "v"},
        "sent_at": 1_800_000_000,
        "expires_at": 1_800_003_600,
        **extra,
    }


def push(
    kind: str = "notification", *, ttl: int = 3600, collapse_key: str | None = None, **extra: Any
) -> PushMessage:
    return PushMessage(msg_id="m1", envelope=envelope(kind, **extra), ttl=ttl, collapse_key=collapse_key)


def form_of(message: PushMessage, creds: mipush.MiPushCredentials = CREDS) -> dict[str, str]:
    body = mipush.build_request(message, REGID, creds, "").body.decode()
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


def answer(status: int, body: Any, **headers: str) -> VendorResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return VendorResponse(status=status, headers=headers, body=raw)


def error(code: int, reason: str = "", description: str = "") -> VendorResponse:
    return answer(
        200,
        {"result": "error", "reason": reason, "trace_id": "Xcm1", "code": code, "description": description},
    )


async def within(awaitable: Awaitable[T], seconds: float = 10.0) -> T:
    return await asyncio.wait_for(awaitable, seconds)


# --- credentials ---------------------------------------------------------------------------


def test_load_credentials(tmp_path: Path) -> None:
    ca_file, _, _ = make_ca(tmp_path)
    creds = mipush.load_credentials(
        {
            "app_secret": "s3cr3t==",
            "package_name": "com.example.push",
            "base_url": "https://mi.example/",
            "ca_file": ca_file,
        },
        tmp_path,
    )
    assert creds == mipush.MiPushCredentials("s3cr3t==", "com.example.push", "https://mi.example", ca_file)
    assert "s3cr3t" not in repr(creds)
    default = mipush.load_credentials(
        {"app_secret": "s", "package_name": "p", "channel_id": "high_system"}, tmp_path
    )
    assert default.base_url == "https://api.xmpush.xiaomi.com"
    assert default.ca_file is None
    assert default.channel_id == "high_system"


@pytest.mark.parametrize(
    ("obj", "names"),
    [
        ({"package_name": "p"}, "app_secret"),
        ({"app_secret": "s"}, "package_name"),
        ({"app_secret": "s", "package_name": ""}, "package_name"),
        ({"app_secret": "s", "package_name": "p", "base_url": "http://mi.example"}, "base_url"),
        ({"app_secret": "s", "package_name": "p", "ca_file": "nope.pem"}, "ca_file"),
        ("mipush", "object"),
    ],
)
def test_load_credentials_rejects_bad_config(tmp_path: Path, obj: Any, names: str) -> None:
    with pytest.raises(InvalidContent) as info:
        mipush.load_credentials(obj, tmp_path)
    assert info.value.code == "bad_vendor_config"
    assert names in info.value.message


# --- build_request -------------------------------------------------------------------------


def test_notification_request_follows_the_server_api() -> None:
    request = mipush.build_request(push(), REGID, CREDS, "ignored")
    assert request.method == "POST"
    assert request.url == "https://api.xmpush.xiaomi.com/v3/message/regid"
    assert request.headers["authorization"] == "key=s3cr3t=="
    assert request.headers["content-type"].startswith("application/x-www-form-urlencoded")
    form = form_of(push())
    assert json.loads(form.pop("payload")) == envelope()
    assert form == {
        "registration_id": REGID,
        "restricted_package_name": "com.example.push",
        "time_to_live": "3600000",
        "pass_through": "0",
        "title": "Hello",
        "description": "World",
        "notify_type": "-1",
        "notify_id": str(mipush.notify_id("m1")),
        "extra.notify_effect": "1",
        "extra.notify_foreground": "1",
    }


def test_data_message_is_pass_through() -> None:
    form = form_of(push("message"))
    assert form["pass_through"] == "1"
    assert "title" not in form and "notify_id" not in form
    assert json.loads(form["payload"])["type"] == "message"


def test_texts_are_cut_to_the_documented_lengths_and_stand_in_for_each_other() -> None:
    form = form_of(push(title="标" * 80, body="b" * 300))
    assert len(form["title"]) == 49 and len(form["description"]) == 127
    assert form_of(push(title="", body="only body"))["title"] == "only body"
    assert form_of(push(title="only title", body=" "))["description"] == "only title"
    assert form_of(push(title="", body=""))["pass_through"] == "1"


def test_collapse_key_sound_and_channel() -> None:
    creds = mipush.MiPushCredentials("s", "com.example.push", channel_id="high_system")
    form = form_of(push(collapse_key="score", sound="chime"), creds)
    assert form["notify_id"] == str(mipush.notify_id("score"))
    assert form["extra.sound_uri"] == "android.resource://com.example.push/raw/chime"
    assert form["extra.channel_id"] == "high_system"


@given(st.text())
def test_notify_id_is_in_range(key: str) -> None:
    assert 0 <= mipush.notify_id(key) < 2**31


def test_payload_limit() -> None:
    base = len(json.dumps(envelope(body=""), separators=(",", ":")))
    mipush.build_request(push(body="x" * (4096 - base)), REGID, CREDS, "")
    with pytest.raises(PayloadTooLargeForVendor):
        mipush.build_request(push(body="x" * (4097 - base)), REGID, CREDS, "")
    with pytest.raises(PayloadTooLargeForVendor):  # bytes, not characters
        mipush.build_request(push(body="é" * (4096 - base)), REGID, CREDS, "")


# --- classify ------------------------------------------------------------------------------

OK = {
    "result": "ok",
    "trace_id": "Xlm1",
    "code": 0,
    "data": {"id": "slm42"},
    "description": "成功",
    "info": "Received push messages for 1 REGID",
}


@pytest.mark.parametrize(
    ("response", "outcome"),
    [
        (answer(200, OK), Delivered("slm42")),
        (answer(200, {**OK, "data": {"id": "slm42", "bad_regids": REGID}}), DropToken("bad_regid")),
        (error(20301, "No valid targets!", "发送消息失败"), DropToken("invalid_regid")),
        (error(20301, "", "发送消息失败"), Fail("send_failed")),
        (error(22000, "Invalid application secret!", "非法应用"), Fail("invalid_app_secret", auth=True)),
        (error(21301, "Authentication failed", "认证失败"), Fail("authentication_failed", auth=True)),
        (error(22022, "", "应用程序package name不合法"), Fail("invalid_package_name", auth=True)),
        (error(10031, "", "应用在黑名单中,禁止发送消息"), Fail("app_blacklisted", auth=True)),
        (error(10002, "", "系统繁忙"), Retry("vendor_busy")),
        (error(10001, "", "系统错误"), Retry("vendor_system_error")),
        (error(10027, "", "应用的API调用太频繁"), Retry("rate_limited")),
        (error(10034, "", "应用当日发送消息数量过多"), Retry("daily_quota_exceeded")),
        (error(65009, "", "消息内容太长"), Fail("payload_too_large")),
        (error(10017, "", "参数值非法"), Fail("invalid_parameter")),
        (error(12345, "", "new"), Fail("code_12345")),
        (answer(200, {**OK, "code": "0"}), Delivered("slm42")),
        (answer(401, b"Unauthorized"), Fail("unauthorized", auth=True)),
        (answer(503, b"", **{"retry-after": "5"}), Retry("rate_limited", after=5.0)),
        (answer(500, b"oops"), Retry("http_500")),
        (answer(404, b"nope"), Fail("http_404")),
    ],
)
def test_classify(response: VendorResponse, outcome: object) -> None:
    assert mipush.classify(response) == outcome


@given(
    st.integers(100, 599),
    st.one_of(
        st.binary(max_size=100),
        st.dictionaries(
            st.sampled_from(["code", "result", "data", "reason"]),
            st.one_of(st.integers(), st.text(), st.none(), st.dictionaries(st.text(), st.text())),
        ),
    ),
)
def test_classify_never_raises(status: int, body: Any) -> None:
    response = answer(status, body)
    assert isinstance(mipush.classify(response), Delivered | Retry | DropToken | Fail)


# --- the channel against the fake over TLS + HTTP/2 -----------------------------------------


@dataclass
class Rig:
    fake: FakeMiPush
    channel: mipush.MiPushChannel
    base_url: str
    ca_file: str


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    fake = FakeMiPush()
    async with tls_server(fake.app) as (base_url, ca_file):
        creds = mipush.load_credentials(fake.vendor_config(base_url, ca_file), tmp_path)
        async with mipush.MiPushChannel(creds) as channel:
            yield Rig(fake, channel, base_url, ca_file)


async def test_send_delivers_over_http2(rig: Rig) -> None:
    outcome = await within(rig.channel.send(push(), REGID))
    assert isinstance(outcome, Delivered) and outcome.vendor_id and outcome.vendor_id.startswith("slm")
    assert isinstance(await within(rig.channel.send(push("message"), REGID)), Delivered)
    assert set(rig.fake.http_versions) == {"2"}
    notification, message = rig.fake.messages
    assert notification["registration_id"] == REGID and notification["pass_through"] == "0"
    assert json.loads(notification["payload"]) == envelope()
    assert message["pass_through"] == "1"
    assert rig.channel.stats.sent == 2 and rig.channel.stats.delivered == 2


async def test_invalid_regid_is_dropped(rig: Rig) -> None:
    rig.fake.invalid_tokens.add("gone")
    rig.fake.bad_regids.add("half-gone")
    assert await within(rig.channel.send(push(), "gone")) == DropToken("invalid_regid")
    assert await within(rig.channel.send(push(), "half-gone")) == DropToken("bad_regid")
    assert rig.channel.stats.dropped_tokens == 2


async def test_rate_limit_retries_then_delivers(rig: Rig) -> None:
    rig.fake.throttle_once.add(REGID)
    assert await within(rig.channel.send(push(), REGID)) == Retry("rate_limited")
    assert isinstance(await within(rig.channel.send(push(), REGID)), Delivered)
    assert rig.channel.stats.retried == 1


async def test_refused_secret_is_an_app_alarm_without_resend(rig: Rig, tmp_path: Path) -> None:
    rig.fake.reject_auth_once = True
    assert await within(rig.channel.send(push(), REGID)) == Fail("invalid_app_secret", auth=True)
    assert rig.fake.messages == []  # a static key: nothing to refresh, no second attempt
    assert isinstance(await within(rig.channel.send(push(), REGID)), Delivered)
    wrong = {**rig.fake.vendor_config(rig.base_url, rig.ca_file), "app_secret": "wrong"}
    async with mipush.MiPushChannel(mipush.load_credentials(wrong, tmp_path)) as channel:
        assert await within(channel.send(push(), REGID)) == Fail("invalid_app_secret", auth=True)
        assert channel.stats.failed == 1


async def test_too_large_is_failed_without_sending(rig: Rig) -> None:
    assert await within(rig.channel.send(push(body="x" * 5000), REGID)) == Fail("payload_too_large")
    assert rig.fake.messages == []


async def test_network_error_is_retry() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with mipush.MiPushChannel(
        mipush.MiPushCredentials("s", "p", f"https://127.0.0.1:{port}")
    ) as channel:
        assert await within(channel.send(push(), REGID)) == Retry("network")
