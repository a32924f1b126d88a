"""Issue 18, item 1 (acceptance): the data dir's filesystem fills up under a running server with a
connected device. Pushes are refused with 503 ``store_unavailable`` + ``Retry-After`` (never 202
for what is not on disk) and ``/readyz`` says the store is not ready; once the filler is deleted,
every push that got 202, before, during and after, reaches the device, without a restart, and
``/readyz`` is ready again."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mqttpush import signing, topics
from mqttpush.client import PushClient
from mqttpush.errors import ClientError
from tests.conftest import Running, _serve
from tests.mqtt_raw import RawClient

DISK = "2m"
CHUNK = 64 * 1024
MAX_PUSHES = 2000
MARGIN = 96 * 1024


@contextlib.contextmanager
def small_filesystem(mountpoint: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs at ``mountpoint`` (CI runs as root), unmounted on the way out."""
    if os.geteuid() != 0:
        pytest.fail("mounting the small filesystem needs root (as in CI)")
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem has no room left; returns the bytes written."""
    written = 0
    with path.open("wb", buffering=0) as f:
        while True:
            try:
                written += f.write(b"\xa5" * CHUNK)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        with contextlib.suppress(OSError):  # the last blocks: a byte at a time
            while f.write(b"\xa5"):
                written += 1
    return written


def signed_push(r: Running, device: str, title: str) -> httpx.Response:
    body = json.dumps(
        {"target": {"devices": [device]}, "notification": {"title": title, "body": "x" * 1500}}
    ).encode()
    headers = signing.signed_headers(r.app_key, r.app_secret, "POST", "/api/v1/push", body, time.time())
    return httpx.post(r.url + "/api/v1/push", content=body, headers=headers, timeout=30)


class Inbox:
    """Every message id the device receives (it acknowledges each, QoS 1), awaitable."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.ids: set[str] = set()
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while (p := await self.client.next_publish(3600)) is not None:
            if p.payload:
                self.ids.add(json.loads(p.payload)["id"])
                self._changed.set()

    async def wait_for(self, wanted: set[str], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not wanted <= self.ids:
                self._changed.clear()
                await self._changed.wait()


async def test_a_full_disk_refuses_pushes_and_delivery_resumes_when_space_is_freed(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "disk") as disk, contextlib.contextmanager(_serve)(disk / "data") as r:
        ((device, token),) = r.register(1)
        client, code, _ = await RawClient.connect(r.mqtt_port, device, device, token)
        assert code == 0
        assert await client.subscribe(topics.inbox_filter(r.app_key, device)) == [1]
        inbox = Inbox(client)
        accepted: list[str] = []
        try:
            for i in range(3):
                resp = await asyncio.to_thread(signed_push, r, device, f"before {i}")
                assert resp.status_code == 202, resp.text
                accepted.append(resp.json()["msg_id"])
            await inbox.wait_for(set(accepted), 30)

            filler = disk / "filler"
            size = await asyncio.to_thread(fill, filler)
            # Leave a little room: some pushes still fit, and the disk fills between their commit
            # and the dispatcher's writes, as it does in production.
            os.truncate(filler, size - MARGIN)
            refused = None
            for i in range(MAX_PUSHES):
                resp = await asyncio.to_thread(signed_push, r, device, f"full {i}")
                if resp.status_code == 202:
                    accepted.append(resp.json()["msg_id"])  # it fit: it must arrive too
                    continue
                assert resp.status_code == 503, resp.text  # never a 500
                assert int(resp.headers["Retry-After"]) >= 1
                if resp.json()["error"]["code"] == "store_unavailable":
                    refused = resp
                    break
                assert resp.json()["error"]["code"] == "overloaded"  # the dispatcher is waiting
            assert refused is not None, "the full disk never refused a push"

            ready = await asyncio.to_thread(httpx.get, r.url + "/readyz", timeout=30)
            assert ready.status_code == 503, ready.text
            error = ready.json()["error"]
            assert error["code"] == "not_ready" and "store" in error["parts"]
            health = await asyncio.to_thread(httpx.get, r.url + "/healthz", timeout=30)
            assert health.status_code == 200  # the process is up all the same

            filler.unlink()  # the operator frees the space; nobody restarts anything

            await inbox.wait_for(set(accepted), 60)
            for i in range(3):
                with PushClient(r.url, r.app_key, r.app_secret, timeout=30) as c:
                    try:
                        result = await asyncio.to_thread(
                            c.push, {"target": {"devices": [device]}, "notification": {"title": f"after {i}"}}
                        )
                    except ClientError as exc:
                        raise AssertionError(f"push after the disk was freed: {exc.code}") from None
                accepted.append(result["msg_id"])
            await inbox.wait_for(set(accepted), 60)

            loops = r.server.bridge.loops, r.server.broker_node.loops
            for supervisors in loops:
                await asyncio.to_thread(r.call, asyncio.wait_for(supervisors.wait_running(), 30), 35)
            ready = await asyncio.to_thread(httpx.get, r.url + "/readyz", timeout=30)
            assert (ready.status_code, ready.json()) == (200, {"ready": True})
            for msg_id in accepted:
                status = await asyncio.to_thread(r.client().message, msg_id)
                assert status["deliveries"][0]["state"] == "published", status
        finally:
            inbox.task.cancel()
            await asyncio.gather(inbox.task, return_exceptions=True)
            await client.close()
