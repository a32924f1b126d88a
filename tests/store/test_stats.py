"""The statistics repository on each engine: counts flushed into minute, hour and day rows in one
transaction, each granularity's retention, and queries that add what is not flushed yet
(docs/statistics.md). The whole path through the server is tests/test_stats.py."""

from __future__ import annotations

import json

from mqttpush.models import DeliveryState
from mqttpush.store.stats import Retention
from mqttpush.store.store import Store
from tests.store.fake_clock import FakeClock


def test_flush_rolls_up_and_retention_keeps_each_granularity(store: Store, clock: FakeClock) -> None:
    store.stats.enable(Retention(minute_days=1, hour_days=3, day_days=0))
    app = store.apps.create_app("a")
    device = store.devices.register_device(app.app_key, "i-1", "android", app_version="9")
    start = clock.now()
    envelopes = [  # as mqttpush/envelope.py lays them out, and in another order (read in full)
        {"id": "m", "app": app.app_key, "type": "notification", "title": "t"},
        {"data": {"type": "not this one"}, "type": "notification", "id": "m"},
    ]
    for i in range(3):
        store.messages.accept_message(
            msg_id=f"m{i}",
            app_key=app.app_key,
            kind="devices",
            target={"devices": [device.device_id]},
            envelope=json.dumps(envelopes[i % 2], separators=(",", ":")).encode(),
            policy={},
            expires_at=clock.now() + 3600,
            device_ids=[device.device_id],
        )
        store.messages.transition([(f"m{i}", device.device_id)], DeliveryState.PUBLISHED)
        clock.advance(70)
    assert store.stats.flush() == 6  # three minutes, each with an accepted (none) and a published (mqtt) row
    window = (start - 86400, start + 86400)
    for step in ("1m", "1h", "1d"):
        totals = store.stats.query(app.app_key, *window, None, step)["totals"]
        assert (totals["targeted"], totals["published"]) == (3, 3), step
    by_type = store.stats.query(app.app_key, *window, "type", "1d")["series"]
    assert [(s["key"], sum(p["targeted"] for p in s["points"])) for s in by_type] == [
        ({"type": "notification"}, 3)
    ]
    doc = store.stats.query(app.app_key, *window, "platform,app_version,channel", "1h")
    assert [s["key"] for s in doc["series"]] == [
        {"platform": "android", "app_version": "9", "channel": "mqtt"},
        {"platform": "android", "app_version": "9", "channel": "none"},
    ]

    clock.advance(2 * 86400)  # past the minutes' retention, not the hours'
    store.stats.flush()
    assert store.stats.query(app.app_key, *window, None, "1m")["totals"]["targeted"] == 0
    assert store.stats.query(app.app_key, *window, None, "1h")["totals"]["targeted"] == 3
    clock.advance(2 * 86400)  # past the hours' too; days are kept forever (0)
    store.stats.flush()
    assert store.stats.query(app.app_key, *window, None, "1h")["totals"]["targeted"] == 0
    assert store.stats.query(app.app_key, *window, None, "1d")["totals"]["targeted"] == 3


def test_a_query_adds_what_is_not_flushed_and_a_flush_counts_nothing_twice(
    store: Store, clock: FakeClock
) -> None:
    store.stats.enable()
    app = store.apps.create_app("a")
    devices = [
        store.devices.register_device(app.app_key, f"i-{i}", ("ios", "web")[i % 2]).device_id
        for i in range(5)
    ]
    envelope = json.dumps({"id": "m", "app": app.app_key, "type": "message"}, separators=(",", ":")).encode()
    store.messages.accept_message(
        msg_id="m",
        app_key=app.app_key,
        kind="devices",
        target={"devices": devices},
        envelope=envelope,
        policy={},
        expires_at=clock.now() + 60,
        device_ids=devices,
    )
    store.messages.transition([("m", d) for d in devices[:3]], DeliveryState.PUBLISHED)
    store.stats.flush()  # the rows before and after it are counted in two batches
    clock.advance(120)
    store.messages.expire_due()
    window = (clock.now() - 3600, clock.now() + 60)

    def by_channel() -> dict[str, dict[str, int]]:
        doc = store.stats.query(app.app_key, *window, "channel,platform", "1h")
        return {
            f"{s['key']['channel']}/{s['key']['platform']}": {
                c: sum(p[c] for p in s["points"])
                for c in ("targeted", "published", "expired")
                if any(p[c] for p in s["points"])
            }
            for s in doc["series"]
        }

    expected = {
        "none/ios": {"targeted": 3, "expired": 1},  # i-4: expired unsent
        "none/web": {"targeted": 2, "expired": 1},  # i-3
        "mqtt/ios": {"published": 2, "expired": 2},  # i-0, i-2: what carried them so far
        "mqtt/web": {"published": 1, "expired": 1},  # i-1
    }
    assert by_channel() == expected  # the publishes flushed, the expiries still in memory
    store.stats.flush()
    assert by_channel() == expected
    store.stats.flush()  # nothing new: nothing added
    assert by_channel() == expected
    assert store.stats.query(app.app_key, *window)["totals"]["expired"] == 5
