"""The clients' retries (docs/api.md, "Clients"): 429 and 503 are tried again after their
``Retry-After`` and signed afresh; giving up raises the server's code; a lost answer is retried only
where running a call twice is harmless. A scripted front (tests/fakes/front.py) stands before the
real server and counts the attempts; the last test uses the server's own rate limit."""

from __future__ import annotations

import asyncio
import contextlib
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from mqttpush.client import AsyncPushClient, PushClient
from mqttpush.errors import ClientError
from tests.conftest import Running, _serve
from tests.fakes.front import Drop, Refuse, front

PUSH = "/api/v1/push"


def _note(device: str, **policy: Any) -> dict[str, Any]:
    return {"target": {"devices": [device]}, "notification": {"title": "t"}, "policy": policy}


async def _messages(r: Running) -> list[dict[str, Any]]:
    def read() -> list[dict[str, Any]]:
        with r.client() as c:
            return c.messages()

    return await asyncio.to_thread(read)


async def test_a_503_is_retried_after_its_retry_after_and_signed_afresh(running: Running) -> None:
    r = running
    ((device, _),) = await asyncio.to_thread(r.register)
    async with front(r.url, Refuse(503, "overloaded", "1")) as f:
        with PushClient(f.url, r.app_key, r.app_secret) as c:
            started = time.monotonic()
            doc = await asyncio.to_thread(c.push, _note(device))
            elapsed = time.monotonic() - started
    posts = f.requests("POST", PUSH)
    assert len(posts) == 2 and elapsed >= 1.0
    assert len({p.headers["x-mqttpush-nonce"] for p in posts}) == 2  # a replayed nonce is refused
    assert [m["msg_id"] for m in await _messages(r)] == [doc["msg_id"]]


async def test_the_async_client_waits_out_a_429_whose_retry_after_is_an_http_date(running: Running) -> None:
    r = running
    ((device, _),) = await asyncio.to_thread(r.register)
    store = r.server.store
    token = (await asyncio.to_thread(r.call, store.run(store.tokens.create, r.app_key, "push"))).token
    later = formatdate(time.time() + 2, usegmt=True)  # measured against the answer's Date: 1-2 s
    async with (
        front(r.url, Refuse(429, "rate_limited", later)) as f,
        AsyncPushClient(f.url, token=token) as c,
    ):
        started = time.monotonic()
        doc = await c.push_text(device, "hello", title="hi")
        elapsed = time.monotonic() - started
    assert len(f.requests("POST", f"{PUSH}/device/{device}")) == 2 and elapsed >= 1.0
    assert [m["msg_id"] for m in await _messages(r)] == [doc["msg_id"]]


async def test_giving_up_raises_the_servers_code_status_and_retry_after(running: Running) -> None:
    r = running
    ((device, _),) = await asyncio.to_thread(r.register)
    async with front(r.url, *[Refuse(503, "store_unavailable", "0")] * 3) as f:
        with (
            PushClient(f.url, r.app_key, r.app_secret, retries=2) as c,
            pytest.raises(ClientError) as gave_up,
        ):
            await asyncio.to_thread(c.push, _note(device))
    error = gave_up.value
    assert (error.code, error.status, error.retry_after) == ("store_unavailable", 503, 0.0)
    assert len(f.requests("POST", PUSH)) == 3 and "gave up after 3 attempts" in error.message

    # A wait beyond max_wait is not waited for: the caller hears at once what the server asked.
    async with (
        front(r.url, Refuse(429, "rate_limited", "30")) as f,
        AsyncPushClient(f.url, r.app_key, r.app_secret, max_wait=5) as ac,
    ):
        with pytest.raises(ClientError) as too_long:
            await ac.settings()
    assert (too_long.value.code, too_long.value.status, too_long.value.retry_after) == (
        "rate_limited",
        429,
        30.0,
    )
    assert len(f.seen) == 1
    # Without the header: a jittered backoff, still within max_wait.
    async with (
        front(r.url, Refuse(503, "overloaded"), Refuse(503, "overloaded")) as f,
        AsyncPushClient(f.url, r.app_key, r.app_secret, max_wait=5) as ac,
    ):
        assert "require_approval" in await ac.settings()
    assert len(f.seen) == 3
    assert await _messages(r) == []  # none of the refused pushes was taken


async def test_a_push_without_biz_id_is_not_sent_again_after_its_answer_was_lost(running: Running) -> None:
    r = running
    ((device, _),) = await asyncio.to_thread(r.register)
    async with front(r.url, Drop(forward=True)) as f, AsyncPushClient(f.url, r.app_key, r.app_secret) as c:
        with pytest.raises(ClientError) as lost:
            await c.push(_note(device))
    assert lost.value.code == "no_answer" and "may or may not" in lost.value.message
    assert len(f.requests("POST", PUSH)) == 1
    assert len(await _messages(r)) == 1  # it was taken: a blind re-send would have made two


async def test_a_push_with_biz_id_and_a_get_are_sent_again_after_a_lost_answer(running: Running) -> None:
    r = running
    ((device, _),) = await asyncio.to_thread(r.register)
    async with front(r.url, Drop(forward=True)) as f:
        with PushClient(f.url, r.app_key, r.app_secret) as c:
            doc = await asyncio.to_thread(c.push, _note(device, biz_id="order-9"))
            f.script.append(Drop(forward=False))
            status = await asyncio.to_thread(c.message, doc["msg_id"])
    assert len(f.requests("POST", PUSH)) == 2  # the second was answered with the first's msg_id
    assert len(f.requests("GET", f"/api/v1/messages/{doc['msg_id']}")) == 2
    assert status["msg_id"] == doc["msg_id"]
    assert [m["msg_id"] for m in await _messages(r)] == [doc["msg_id"]]


async def test_an_upload_refused_once_is_streamed_again(running: Running, tmp_path: Path) -> None:
    r = running
    ((device, _),) = await asyncio.to_thread(r.register)
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{device}\n" * 20_000)  # several chunks
    async with (
        front(r.url, Refuse(503, "overloaded", "0")) as f,
        AsyncPushClient(f.url, r.app_key, r.app_secret) as c,
    ):
        uploaded = await c.upload_file(ids)
    bodies = [s.body for s in f.seen if s.method == "POST"]
    assert len(bodies) == 2 and bodies[0] == bodies[1] == ids.read_bytes()
    assert uploaded["lines"] == 20_000


def test_the_servers_own_rate_limit_is_waited_out(tmp_path: Path) -> None:
    with contextlib.contextmanager(_serve)(tmp_path / "data", None, api_rate=1, api_burst=1) as r:
        ((device, _),) = r.register()
        started = time.monotonic()
        with r.client() as c:
            ids = [c.push(_note(device))["msg_id"] for _ in range(3)]  # a 429 before the 2nd and 3rd
        assert len(set(ids)) == 3 and time.monotonic() - started >= 1.0
        with (
            PushClient(r.url, r.app_key, r.app_secret, retries=0) as impatient,
            pytest.raises(ClientError) as limited,
        ):
            for _ in range(3):
                impatient.push(_note(device))
        assert (limited.value.code, limited.value.status) == ("rate_limited", 429)
        assert limited.value.retry_after is not None and limited.value.retry_after >= 1
