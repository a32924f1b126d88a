"""``mqttpush device show`` tells a device's vendor tokens, masked, with their story (issue 13 item 11):
added, last used by a forward, and when and why a vendor declared one dead (a tombstone)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from mqttpush.store import Store
from tests.conftest import Running, cli, serving_apns

TOKEN = "0" * 58 + "c0ffee"


def _show(r: Running, device: str) -> dict[str, Any]:
    proc = cli(
        "device",
        "show",
        device,
        "--url",
        r.url,
        "--app-key",
        r.app_key,
        "--app-secret",
        r.app_secret,
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    assert TOKEN not in proc.stdout  # never the whole token
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


async def _push_and_settle(r: Running, device: str) -> None:
    def go() -> None:
        with r.client() as c:
            c.push({"target": {"devices": [device]}, "notification": {"title": "Sale"}})

    await asyncio.to_thread(go)
    await asyncio.to_thread(r.call, r.server.dispatcher.drained())
    await asyncio.to_thread(r.call, r.server.bridge.vendors.drained())


async def test_device_show_masks_tokens_and_keeps_a_tombstone_of_a_dead_one(
    running: Running, tmp_path: Path
) -> None:
    r = running
    async with serving_apns(r, tmp_path) as fake:
        ((device, _),) = r.register(platform="ios")
        with r.client() as c:
            c.set_vendor_token(device, "apns", TOKEN)

        (fresh,) = (await asyncio.to_thread(_show, r, device))["vendor_tokens"]
        assert fresh["vendor"] == "apns" and fresh["token"] == "…c0ffee"
        assert isinstance(fresh["added_at"], float)
        assert (
            fresh["last_used_at"] is None and fresh["removed_at"] is None and fresh["removed_reason"] is None
        )

        await _push_and_settle(r, device)  # offline: forwarded through APNs
        (used,) = (await asyncio.to_thread(_show, r, device))["vendor_tokens"]
        assert len(fake.received) == 1
        assert used["last_used_at"] is not None and used["last_used_at"] >= used["added_at"]
        assert used["removed_at"] is None

        fake.unregistered.add(TOKEN)
        await _push_and_settle(r, device)
        (dead,) = (await asyncio.to_thread(_show, r, device))["vendor_tokens"]
        assert dead["token"] == "…c0ffee" and dead["removed_at"] >= used["last_used_at"]
        assert "Unregistered" in dead["removed_reason"]
        assert Store(r.data_dir).devices.vendor_tokens(device) == []  # forwards no longer use it

        tried = fake.requests
        await _push_and_settle(r, device)  # a dead token is not tried again
        assert fake.requests == tried

        with r.client() as c:  # registered again (the app reinstalled): alive again
            c.set_vendor_token(device, "apns", TOKEN)
        (again,) = (await asyncio.to_thread(_show, r, device))["vendor_tokens"]
        assert again["removed_at"] is None and again["removed_reason"] is None
