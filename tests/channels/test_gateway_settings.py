"""VENDORS.json gateway settings (rate_per_second, max_in_flight, connections): accepted by every
vendor entry, checked, and handed to the channel."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.vendors import check_vendor_config, make_channel
from mqttpush.errors import InvalidContent
from tests.fakes.apns import write_auth_key


def _apns(tmp_path: Path, **extra: object) -> dict[str, object]:
    write_auth_key(tmp_path / "AuthKey.p8")
    return {
        "team_id": "TEAM123456",
        "key_id": "KEY1234567",
        "key_file": "AuthKey.p8",
        "topic": "com.x",
    } | extra


async def test_gateway_settings_reach_the_apns_channel(tmp_path: Path) -> None:
    obj = _apns(tmp_path, rate_per_second=50.5, max_in_flight=300, connections=2)
    channel = make_channel("apns", check_vendor_config("apns", obj, tmp_path, None))
    try:
        assert channel._pool._max_streams == 300  # type: ignore[attr-defined]
        assert channel._pool._max_connections == 2  # type: ignore[attr-defined]
    finally:
        await channel.close()


@pytest.mark.parametrize(
    "extra",
    [{"max_in_flight": 0}, {"connections": 9}, {"rate_per_second": "fast"}, {"connections": True}],
)
def test_bad_gateway_settings_are_refused(tmp_path: Path, extra: dict[str, object]) -> None:
    with pytest.raises(InvalidContent) as err:
        check_vendor_config("apns", _apns(tmp_path, **extra), tmp_path, None)
    assert err.value.code == "bad_vendor_config"
    assert next(iter(extra)) in err.value.message
