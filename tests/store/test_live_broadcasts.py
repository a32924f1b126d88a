"""A live broadcast is re-published after a broker restart even when no delivery of it is pending
(issue 13, item 5): its retained topic is what devices registering later receive."""

from __future__ import annotations

from mqttpush.models import ReceiptEvent
from mqttpush.store.store import Store
from tests.store.fake_clock import START, FakeClock
from tests.store.test_messages import accept

TTL = 3600


def _broadcast(store: Store, app_key: str, msg_id: str, devices: list[str]) -> bytes:
    return accept(store, app_key, msg_id, devices, START + TTL, broadcast=True, ttl=TTL, title="to all")


def test_a_live_broadcast_with_nothing_pending_comes_once_without_a_device(
    store: Store, clock: FakeClock
) -> None:
    app = store.apps.create_app("news")
    everyone = _broadcast(store, app.app_key, "b1", ["d1"])
    _broadcast(store, app.app_key, "b2", [])  # no device yet
    _broadcast(store, app.app_key, "b3", ["d1", "d2"])
    store.messages.publish_all("b1")
    store.messages.apply_receipt(app.app_key, "d1", "b1", ReceiptEvent.ARRIVED)
    store.messages.recall(app.app_key, "b3")

    pending = store.messages.pending_deliveries()
    assert {(p.msg_id, p.device_id, p.fanout) for p in pending} == {("b1", "", "topic"), ("b2", "", "topic")}
    b1 = next(p for p in pending if p.msg_id == "b1")
    assert (b1.app_key, b1.payload, b1.expires_at) == (app.app_key, everyone, START + TTL)

    clock.advance(TTL)
    assert store.messages.pending_deliveries() == []


def test_a_broadcast_with_pending_deliveries_comes_only_as_those(store: Store) -> None:
    app = store.apps.create_app("news")
    _broadcast(store, app.app_key, "b1", ["d1", "d2"])
    assert {(p.msg_id, p.device_id) for p in store.messages.pending_deliveries()} == {
        ("b1", "d1"),
        ("b1", "d2"),
    }
