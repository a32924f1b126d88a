"""Issue 6: a 10,000-device task forwarded to a (fake) APNs completes with bounded concurrency over
one multiplexed HTTP/2 connection, and its progress counts every forward."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bridge.vendors import check_vendor_config
from mqttpush.store import Store
from tests.conftest import Running
from tests.fakes.apns import FakeApns, write_auth_key
from tests.fakes.tls import tls_server

N = 10_000


async def test_10000_device_task_over_one_http2_connection(running: Running, tmp_path: Path) -> None:
    r = running
    key = write_auth_key(tmp_path / "AuthKey.p8")
    fake = FakeApns(
        team_id="TEAM123456", key_id="KEY1234567", topic="com.example.app", public_key=key.public_key()
    )
    store = Store(r.data_dir)
    devices = store.import_devices(
        r.app_key, [{"install_id": f"i{i}", "platform": "ios", "tags": ["all"]} for i in range(N)]
    )
    store.set_vendor_tokens([(d["device_id"], "apns", f"{i:064x}") for i, d in enumerate(devices)])
    async with tls_server(fake) as (base_url, ca_file):
        obj = {
            "team_id": "TEAM123456",
            "key_id": "KEY1234567",
            "key_file": "AuthKey.p8",
            "topic": "com.example.app",
            "base_url": base_url,
            "ca_file": ca_file,
        }
        store.put_vendor_config(r.app_key, "apns", check_vendor_config("apns", obj, tmp_path, None))
        store.close()

        def push() -> str:
            with r.client() as c:
                return str(
                    c.push({"target": {"tags": "all"}, "notification": {"title": "everyone"}})["task_id"]
                )

        started = time.monotonic()
        task_id = await asyncio.to_thread(push)
        await asyncio.to_thread(r.call, r.server.tasks.idle(), 240)
        await asyncio.to_thread(r.call, r.server.bridge.vendors.drained(), 240)
        elapsed = time.monotonic() - started
        with r.client() as c:
            task = c.task(task_id)
        await asyncio.to_thread(r.call, r.server.bridge.vendors.close())
    assert (task["targeted"], task["forwarded"], task["failed"]) == (N, N, 0)
    # every device got it; a request that timed out under load may have been retried (devices de-duplicate)
    assert len({n.device_token for n in fake.received}) == N
    assert fake.http_versions == {"2"}
    assert len(fake.connections) == 1  # one connection, multiplexed
    print(f"forwarded {N} in {elapsed:.1f}s = {N / elapsed:.0f}/s")
