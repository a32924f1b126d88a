"""Vendor credentials set by another process reach a running server within seconds (issue 13 item 3).

``mqttpush app vendor set`` writes the store directly, beside the running server; before the
fix the server's gateway kept its first answer ("no vendors") until a restart.
"""

from __future__ import annotations

import json
from pathlib import Path

from bridge.vendors import VendorGateway, make_channel
from mqttpush.clock import ManualClock
from mqttpush.store import Store
from tests.conftest import Running, cli
from tests.fakes.apns import write_auth_key


def _vendors_json(tmp_path: Path) -> Path:
    write_auth_key(tmp_path / "AuthKey.p8")
    path = tmp_path / "VENDORS.json"
    path.write_text(
        json.dumps(
            {
                "apns": {
                    "team_id": "TEAM123456",
                    "key_id": "KEY1234567",
                    "key_file": "AuthKey.p8",
                    "topic": "com.example.app",
                }
            }
        )
    )
    return path


def test_vendor_set_on_a_running_server_takes_effect(clocked: Running, tmp_path: Path) -> None:
    r = clocked
    ((device, _),) = r.register()
    before = r.push([device], policy={"strategy": "vendor"})
    assert r.wait_state(before, device, "published")["channel"] == "mqtt"  # no vendor configured yet

    proc = cli(
        "app",
        "vendor",
        "set",
        r.app_key,
        "--data-dir",
        str(r.data_dir),
        "--config",
        str(_vendors_json(tmp_path)),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    r.advance(3)  # past the gateway's re-check interval, on the server's clock

    after = r.push([device], policy={"strategy": "vendor"})
    failed = r.wait_state(after, device, "failed")
    assert failed["error"] == "no_vendor_token"  # routed by the new credentials, no restart


async def test_gateway_rechecks_credentials_changed_elsewhere(tmp_path: Path) -> None:
    clock = ManualClock()
    mine, theirs = Store(tmp_path, clock=clock), Store(tmp_path, clock=clock)
    app = mine.apps.create_app("shop")
    gateway = VendorGateway(mine, clock, make_channel, recheck_seconds=2.0)
    try:
        assert await gateway.configured(app.app_key) == frozenset()
        theirs.vendors.put_vendor_config(app.app_key, "fcm", {"project_id": "p"})
        assert await gateway.configured(app.app_key) == frozenset()  # cached within the interval
        clock.advance(2.0)
        assert await gateway.configured(app.app_key) == frozenset({"fcm"})
        clock.advance(0.5)
        theirs.vendors.put_vendor_config(app.app_key, "apns", {"topic": "t"})
        clock.advance(2.0)
        assert await gateway.configured(app.app_key) == frozenset({"apns", "fcm"})
    finally:
        await gateway.close()
        mine.close()
        theirs.close()
