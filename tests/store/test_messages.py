"""Messages, deliveries and their history: transitions, receipts, pending and expiry."""

from __future__ import annotations

import json

from mqttpush.models import DeliveryEvent, DeliveryState, DeliveryStatus, ReceiptEvent
from mqttpush.store.store import Store
from tests.store.fake_clock import START, FakeClock

TTL = 3 * 24 * 3600


def accept(
    store: Store,
    app_key: str,
    msg_id: str,
    devices: list[str],
    expires_at: float | None = None,
    *,
    broadcast: bool = False,
    ttl: int = TTL,
    title: str = "hi",
) -> bytes:
    """Accept a message for ``devices`` (a broadcast: fanned out on its topic); its envelope."""
    envelope = json.dumps({"id": msg_id, "app": app_key, "title": title}).encode()
    store.messages.accept_message(
        msg_id=msg_id,
        app_key=app_key,
        kind="broadcast" if broadcast else "devices",
        target={"broadcast": True} if broadcast else {"devices": devices},
        envelope=envelope,
        policy={"ttl": ttl},
        expires_at=store.clock.now() + ttl if expires_at is None else expires_at,
        device_ids=devices,
        fanout="topic" if broadcast else "inbox",
    )
    return envelope


def published(
    store: Store, app_key: str, msg_id: str = "m1", device_id: str = "d1", expires_at: float | None = None
) -> None:
    """A message accepted for one device and handed to the broker: what a receipt moves on."""
    accept(store, app_key, msg_id, [device_id], expires_at)
    store.messages.transition([(msg_id, device_id)], DeliveryState.PUBLISHED)


def receipts_a_second_apart(
    store: Store,
    clock: FakeClock,
    app_key: str,
    *events: ReceiptEvent,
    msg_id: str = "m1",
    device_id: str = "d1",
) -> None:
    """The device's receipts for one delivery, each one second after what came before."""
    for event in events:
        clock.advance(1)
        store.messages.apply_receipt(app_key, device_id, msg_id, event)


def delivery(store: Store, app_key: str, msg_id: str, device_id: str) -> DeliveryStatus:
    status = store.messages.message_status(app_key, msg_id)
    assert status is not None
    matching = [d for d in status.deliveries if d.device_id == device_id]
    assert len(matching) == 1
    return matching[0]


def states(d: DeliveryStatus) -> list[str]:
    return [e.state for e in d.history]


def test_accept_message_records_accepted(store: Store) -> None:
    app = store.apps.create_app("shop")
    accept(store, app.app_key, "m1", ["d1", "d2"])

    status = store.messages.message_status(app.app_key, "m1")
    assert status is not None
    assert (status.msg_id, status.app_key) == ("m1", app.app_key)
    assert status.created_at == START
    assert status.expires_at == START + TTL
    assert [d.device_id for d in status.deliveries] == ["d1", "d2"]
    for d in status.deliveries:
        assert d.state == "accepted"
        assert d.channel == "mqtt"
        assert d.updated_at == START
        assert d.history == (DeliveryEvent("accepted", START),)


def test_message_status_of_unknown_or_other_apps_message_is_none(store: Store) -> None:
    shop = store.apps.create_app("shop")
    news = store.apps.create_app("news")
    accept(store, shop.app_key, "m1", ["d1"])
    assert store.messages.message_status(news.app_key, "m1") is None
    assert store.messages.message_status(shop.app_key, "nope") is None
    assert store.messages.message_status(shop.app_key, "m1") is not None


def test_transition_forward_moves_and_returns_moved_keys(store: Store, clock: FakeClock) -> None:
    app = store.apps.create_app("shop")
    accept(store, app.app_key, "m1", ["d1", "d2"])
    t1 = clock.advance(2)

    moved = store.messages.transition(
        [("m1", "d1"), ("m1", "d2"), ("m1", "nobody"), ("nope", "d1")], DeliveryState.PUBLISHED
    )

    assert moved == [("m1", "d1"), ("m1", "d2")]
    for device_id in ("d1", "d2"):
        d = delivery(store, app.app_key, "m1", device_id)
        assert d.state == "published"
        assert d.updated_at == t1
        assert d.history == (DeliveryEvent("accepted", START), DeliveryEvent("published", t1))


def test_transition_to_same_or_earlier_state_does_not_move(store: Store, clock: FakeClock) -> None:
    app = store.apps.create_app("shop")
    published(store, app.app_key)
    assert store.messages.transition([("m1", "d1")], DeliveryState.PUBLISHED) == []
    assert store.messages.transition([("m1", "d1")], DeliveryState.FORWARDED) == []
    clock.advance(1)
    assert store.messages.apply_receipt(app.app_key, "d1", "m1", ReceiptEvent.ARRIVED) == "inbox"
    before = delivery(store, app.app_key, "m1", "d1")
    clock.advance(1)

    assert store.messages.transition([("m1", "d1")], DeliveryState.ACCEPTED) == []
    assert store.messages.transition([("m1", "d1")], DeliveryState.PUBLISHED) == []

    after = delivery(store, app.app_key, "m1", "d1")
    assert after.state == "arrived"
    assert after == before


def test_transition_to_failed_records_the_reason_and_is_terminal(store: Store, clock: FakeClock) -> None:
    # docs/delivery.md: a delivery can end in failed(reason); transition() is the store's only way there.
    app = store.apps.create_app("shop")
    published(store, app.app_key)
    t = clock.advance(1)

    assert store.messages.transition([("m1", "d1")], DeliveryState.FAILED, detail="bad_token") == [
        ("m1", "d1")
    ]

    d = delivery(store, app.app_key, "m1", "d1")
    assert d.state == "failed"
    assert d.error == "bad_token"
    assert d.history[-1] == DeliveryEvent("failed", t, "bad_token")
    # terminal: nothing moves it again
    assert store.messages.transition([("m1", "d1")], DeliveryState.ARRIVED) == []
    assert delivery(store, app.app_key, "m1", "d1").state == "failed"


def test_transition_to_cancelled_takes_pending_deliveries_out_of_pending(store: Store) -> None:
    app = store.apps.create_app("shop")
    accept(store, app.app_key, "m1", ["d1", "d2"])

    assert store.messages.transition([("m1", "d1")], DeliveryState.CANCELLED) == [("m1", "d1")]

    assert delivery(store, app.app_key, "m1", "d1").state == "cancelled"
    assert {(p.msg_id, p.device_id) for p in store.messages.pending_deliveries()} == {("m1", "d2")}


def test_receipt_arrived_records_history_with_clock_times(store: Store, clock: FakeClock) -> None:
    app = store.apps.create_app("shop")
    accept(store, app.app_key, "m1", ["d1", "d2"])
    t1 = clock.advance(1)
    store.messages.transition([("m1", "d1"), ("m1", "d2")], DeliveryState.PUBLISHED)
    t2 = clock.advance(4)

    assert store.messages.apply_receipt(app.app_key, "d1", "m1", ReceiptEvent.ARRIVED) == "inbox"

    d1 = delivery(store, app.app_key, "m1", "d1")
    assert d1.state == "arrived"
    assert d1.updated_at == t2
    assert d1.history == (
        DeliveryEvent("accepted", START),
        DeliveryEvent("published", t1),
        DeliveryEvent("arrived", t2),
    )
    assert delivery(store, app.app_key, "m1", "d2").state == "published"


def test_receipt_opened_from_published_implies_arrived(store: Store, clock: FakeClock) -> None:
    app = store.apps.create_app("shop")
    accept(store, app.app_key, "m1", ["d1"])
    t1 = clock.advance(1)
    store.messages.transition([("m1", "d1")], DeliveryState.PUBLISHED)
    t2 = clock.advance(30)

    assert store.messages.apply_receipt(app.app_key, "d1", "m1", ReceiptEvent.OPENED) == "inbox"

    d = delivery(store, app.app_key, "m1", "d1")
    assert d.state == "opened"
    assert states(d) == ["accepted", "published", "arrived", "opened"]
    assert [e.at for e in d.history] == [START, t1, t2, t2]


def test_receipt_opened_after_arrived_adds_no_second_arrival(store: Store, clock: FakeClock) -> None:
    app = store.apps.create_app("shop")
    published(store, app.app_key)
    receipts_a_second_apart(store, clock, app.app_key, ReceiptEvent.ARRIVED, ReceiptEvent.DISMISSED)
    d = delivery(store, app.app_key, "m1", "d1")
    assert d.state == "dismissed"
    assert states(d) == ["accepted", "published", "arrived", "dismissed"]


def test_duplicate_receipt_does_not_move_backwards(store: Store, clock: FakeClock) -> None:
    app = store.apps.create_app("shop")
    accept(store, app.app_key, "m1", ["d1"])
    store.messages.apply_receipt(app.app_key, "d1", "m1", ReceiptEvent.OPENED)
    clock.advance(1)
    assert store.messages.apply_receipt(app.app_key, "d1", "m1", ReceiptEvent.ARRIVED) == "inbox"
    assert delivery(store, app.app_key, "m1", "d1").state == "opened"


def test_receipt_for_another_apps_message_is_refused(store: Store) -> None:
    shop = store.apps.create_app("shop")
    news = store.apps.create_app("news")
    published(store, shop.app_key)
    before = delivery(store, shop.app_key, "m1", "d1")

    assert store.messages.apply_receipt(news.app_key, "d1", "m1", ReceiptEvent.ARRIVED) is None
    assert store.messages.apply_receipt(shop.app_key, "d2", "m1", ReceiptEvent.ARRIVED) is None
    assert store.messages.apply_receipt(shop.app_key, "d1", "nope", ReceiptEvent.ARRIVED) is None

    assert delivery(store, shop.app_key, "m1", "d1") == before


def test_pending_deliveries_are_accepted_or_published_and_unexpired(store: Store, clock: FakeClock) -> None:
    app = store.apps.create_app("shop")
    env1 = accept(store, app.app_key, "m1", ["d1"])  # stays accepted
    env2 = accept(store, app.app_key, "m2", ["d1", "d2"])  # published / arrived
    accept(store, app.app_key, "m3", ["d1"], expires_at=START + 10)  # expires soon
    accept(store, app.app_key, "m4", ["d1"])  # opened
    store.messages.transition([("m2", "d1"), ("m2", "d2")], DeliveryState.PUBLISHED)
    store.messages.apply_receipt(app.app_key, "d2", "m2", ReceiptEvent.ARRIVED)
    store.messages.apply_receipt(app.app_key, "d1", "m4", ReceiptEvent.OPENED)

    pending = store.messages.pending_deliveries()
    assert {(p.msg_id, p.device_id, p.state) for p in pending} == {
        ("m1", "d1", DeliveryState.ACCEPTED),
        ("m2", "d1", DeliveryState.PUBLISHED),
        ("m3", "d1", DeliveryState.ACCEPTED),
    }

    clock.advance(10)  # m3 is due now, even before expire_due marks it
    pending = store.messages.pending_deliveries()
    by_key = {(p.msg_id, p.device_id): p for p in pending}
    assert set(by_key) == {("m1", "d1"), ("m2", "d1")}
    assert by_key[("m1", "d1")].payload == env1
    assert by_key[("m2", "d1")].payload == env2
    assert isinstance(by_key[("m1", "d1")].payload, bytes)
    assert by_key[("m1", "d1")].app_key == app.app_key
    assert by_key[("m1", "d1")].expires_at == START + TTL


def test_expire_due_marks_expired_and_returns_what_to_clear(store: Store, clock: FakeClock) -> None:
    shop = store.apps.create_app("shop")
    news = store.apps.create_app("news")
    accept(store, shop.app_key, "m1", ["d1", "d2", "d3"], expires_at=START + 100)
    accept(store, news.app_key, "m2", ["e1"], expires_at=START + 100)
    accept(store, shop.app_key, "m3", ["d1"], expires_at=START + 1000)
    store.messages.transition([("m1", "d2")], DeliveryState.PUBLISHED)
    store.messages.apply_receipt(shop.app_key, "d3", "m1", ReceiptEvent.ARRIVED)

    clock.advance(99)
    assert store.messages.expire_due() == ([], [])

    t = clock.advance(1)
    expired, broadcasts = store.messages.expire_due()
    assert broadcasts == []
    assert sorted(expired) == sorted(
        [(shop.app_key, "d1", "m1"), (shop.app_key, "d2", "m1"), (news.app_key, "e1", "m2")]
    )

    d1 = delivery(store, shop.app_key, "m1", "d1")
    assert d1.state == "expired"
    assert d1.updated_at == t
    assert states(d1) == ["accepted", "expired"]
    assert d1.history[-1].at == t
    assert states(delivery(store, shop.app_key, "m1", "d2")) == ["accepted", "published", "expired"]
    assert delivery(store, shop.app_key, "m1", "d3").state == "arrived"  # delivered: not expired

    assert {(p.msg_id, p.device_id) for p in store.messages.pending_deliveries()} == {("m3", "d1")}
    assert store.messages.expire_due() == ([], [])


def test_receipt_after_expiry_keeps_expired(store: Store, clock: FakeClock) -> None:
    app = store.apps.create_app("shop")
    accept(store, app.app_key, "m1", ["d1"], expires_at=START + 5)
    clock.advance(5)
    store.messages.expire_due()
    clock.advance(1)
    assert store.messages.apply_receipt(app.app_key, "d1", "m1", ReceiptEvent.ARRIVED) == "inbox"
    d = delivery(store, app.app_key, "m1", "d1")
    assert d.state == "expired"
    assert store.messages.transition([("m1", "d1")], DeliveryState.PUBLISHED) == []
