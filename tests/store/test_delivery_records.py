"""Issue 13 at the store: expiry holds at hand-out and at receipt time (item 2), the history is
a forward path (item 9), vendor outcomes record the channel and the attempts (items 7, 8)."""

from __future__ import annotations

from mqttpush.models import DeliveryEvent, DeliveryState, ReceiptEvent
from mqttpush.store.store import Store
from mqttpush.store.vendors import VendorCounters, VendorOutcome
from tests.store.fake_clock import START, FakeClock
from tests.store.test_messages import accept, delivery, published, receipts_a_second_apart, states


def test_pending_deliveries_marks_expired_ones_expired(store: Store, clock: FakeClock) -> None:
    app = store.apps.create_app("shop")
    accept(store, app.app_key, "m1", ["d1"], expires_at=START + 2)
    accept(store, app.app_key, "m2", ["d1"], expires_at=START + 2)
    accept(store, app.app_key, "m3", ["d1"])
    store.messages.transition([("m2", "d1")], DeliveryState.PUBLISHED)
    clock.advance(4)  # no TTL sweep ran meanwhile

    assert {p.msg_id for p in store.messages.pending_deliveries()} == {"m3"}
    for msg_id in ("m1", "m2"):
        d = delivery(store, app.app_key, msg_id, "d1")
        assert d.state == "expired"
        assert d.history[-1] == DeliveryEvent("expired", START + 4, "ttl")


def test_receipt_after_ttl_before_the_sweep_keeps_it_expired(store: Store, clock: FakeClock) -> None:
    app = store.apps.create_app("shop")
    published(store, app.app_key, expires_at=START + 2)
    clock.advance(4)

    assert store.messages.apply_receipt(app.app_key, "d1", "m1", ReceiptEvent.ARRIVED) == "inbox"  # clear it
    d = delivery(store, app.app_key, "m1", "d1")
    assert d.state == "expired"
    assert states(d) == ["accepted", "published", "expired"]
    store.messages.apply_receipt(app.app_key, "d1", "m1", ReceiptEvent.OPENED)
    assert states(delivery(store, app.app_key, "m1", "d1")) == ["accepted", "published", "expired"]


def test_receipt_in_time_still_arrives(store: Store, clock: FakeClock) -> None:
    app = store.apps.create_app("shop")
    published(store, app.app_key, expires_at=START + 2)
    receipts_a_second_apart(store, clock, app.app_key, ReceiptEvent.ARRIVED)
    assert delivery(store, app.app_key, "m1", "d1").state == "arrived"


def test_expired_broadcast_is_not_joined_by_a_late_receipt(store: Store, clock: FakeClock) -> None:
    app = store.apps.create_app("shop")
    store.messages.accept_message(
        msg_id="b1",
        app_key=app.app_key,
        kind="broadcast",
        target={"broadcast": True},
        envelope=b'{"id":"b1"}',
        policy={},
        expires_at=START + 2,
        device_ids=[],
        fanout="topic",
    )
    clock.advance(3)
    assert store.messages.apply_receipt(app.app_key, "late", "b1", ReceiptEvent.ARRIVED) == "topic"
    status = store.messages.message_status(app.app_key, "b1")
    assert status is not None and status.deliveries == []


def test_a_receipt_that_moves_nothing_is_not_in_the_history(store: Store, clock: FakeClock) -> None:
    """``device listen --opened``: "opened" goes out before the automatic "arrived"."""
    app = store.apps.create_app("shop")
    published(store, app.app_key)
    receipts_a_second_apart(store, clock, app.app_key, ReceiptEvent.OPENED, ReceiptEvent.ARRIVED)
    store.messages.apply_receipt(app.app_key, "d1", "m1", ReceiptEvent.OPENED)  # at the same moment

    d = delivery(store, app.app_key, "m1", "d1")
    assert d.state == "opened"
    assert states(d) == ["accepted", "published", "arrived", "opened"]
    assert not any("receipt while" in (h.detail or "") for h in d.history)


def test_an_mqtt_publish_counts_one_attempt(store: Store) -> None:
    app = store.apps.create_app("shop")
    published(store, app.app_key)
    store.messages.transition([("m1", "d1")], DeliveryState.PUBLISHED)  # not a move: not an attempt
    d = delivery(store, app.app_key, "m1", "d1")
    assert (d.channel, d.attempts) == ("mqtt", 1)


def test_vendor_failure_after_five_attempts_shows_the_vendor_and_the_attempts(store: Store) -> None:
    app = store.apps.create_app("shop")
    accept(store, app.app_key, "m1", ["d1"])
    failed = VendorOutcome("m1", "d1", "failed", "gave up after 5 attempts: 503", "tok", attempts=5)
    assert store.vendors.record_vendor_outcomes(app.app_key, "apns", [failed]) == []
    d = delivery(store, app.app_key, "m1", "d1")
    assert (d.state, d.channel, d.attempts) == ("failed", "apns", 5)
    assert d.error == "apns: gave up after 5 attempts: 503"


def test_vendor_forwarded_after_a_retry_counts_both_attempts(store: Store) -> None:
    app = store.apps.create_app("shop")
    accept(store, app.app_key, "m1", ["d1"])
    store.vendors.record_vendor_outcomes(
        app.app_key, "fcm", [VendorOutcome("m1", "d1", "forwarded", "id", "t", 2)]
    )
    d = delivery(store, app.app_key, "m1", "d1")
    assert (d.state, d.channel, d.attempts) == ("forwarded", "fcm", 2)


def test_vendor_copy_beside_mqtt_adds_to_channel_and_attempts(store: Store) -> None:
    app = store.apps.create_app("shop")
    published(store, app.app_key)
    store.vendors.record_vendor_outcomes(
        app.app_key, "fcm", [VendorOutcome("m1", "d1", "forwarded", "id", "t", 1)]
    )
    d = delivery(store, app.app_key, "m1", "d1")
    assert (d.state, d.channel, d.attempts) == ("published", "fcm,mqtt", 2)


def test_vendor_failure_with_fallback_leaves_the_delivery_for_the_inbox(store: Store) -> None:
    app = store.apps.create_app("shop")
    reg = store.devices.register_device(app.app_key, "phone", "ios")
    store.devices.set_vendor_token(app.app_key, reg.device_id, "apns", "dead")
    accept(store, app.app_key, "m1", [reg.device_id])
    dead = VendorOutcome("m1", reg.device_id, "dropped_token", "BadDeviceToken", "dead", 1, fallback=True)

    assert store.vendors.record_vendor_outcomes(app.app_key, "apns", [dead]) == [dead]
    d = delivery(store, app.app_key, "m1", reg.device_id)
    assert (d.state, d.channel, d.attempts, d.error) == ("accepted", "apns,mqtt", 1, None)
    assert store.devices.vendor_tokens(reg.device_id) == []  # a dead token still leaves the registry
    assert store.vendors.vendor_counters(app.app_key)["apns"] == VendorCounters(
        forwarded=0, dropped_tokens=1, failed=1
    )
