"""Issue 17 at the store: webhook events are written in the transaction of what caused them, only
for apps that subscribed; the outbox hands out batches per event type that keep their delivery id
across retries, and gives events up (kept, visible) 24 h after they were created."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mqttpush.errors import InvalidContent, NotFound
from mqttpush.models import DeliveryState, ReceiptEvent
from mqttpush.store import webhooks as webhooks_module
from mqttpush.store.store import Store
from mqttpush.store.vendors import VendorOutcome, vendor_token_hash
from mqttpush.store.webhooks import MAX_BATCH, MAX_WEBHOOKS_PER_APP, RETRY_SECONDS, SENDER_LEASE_SECONDS
from tests.store.fake_clock import START, FakeClock
from tests.store.test_messages import accept


@pytest.fixture
def wstore(store: Store) -> Store:
    """The store on each engine (SQLite, PostgreSQL)."""
    return store


def outbox(store: Store, webhook_id: str | None = None) -> list[dict[str, Any]]:
    rows = store._conn.execute(
        "SELECT webhook_id, event_type, payload, state, batch_id, attempts FROM webhook_outbox ORDER BY event_id"
    ).fetchall()
    keys = ("webhook_id", "type", "payload", "state", "batch_id", "attempts")
    docs = [dict(zip(keys, r, strict=True)) | {"payload": json.loads(r[2])} for r in rows]
    return [d for d in docs if webhook_id is None or d["webhook_id"] == webhook_id]


def test_arrivals_become_events_only_for_subscribed_apps(wstore: Store) -> None:
    shop, other = wstore.apps.create_app("shop"), wstore.apps.create_app("other")
    hook = wstore.webhooks.create(shop.app_key, "https://shop.example/hook", ["delivery.arrived"])
    wstore.webhooks.create(other.app_key, "https://other.example/hook", ["delivery.opened"])
    accept(wstore, shop.app_key, "m1", ["d1", "d2"])
    accept(wstore, other.app_key, "m2", ["d1"])
    wstore.messages.transition([("m1", "d1"), ("m1", "d2"), ("m2", "d1")], DeliveryState.PUBLISHED)
    assert outbox(wstore) == []  # accepted/published are no events

    wstore.messages.apply_receipts(
        [
            (shop.app_key, "d1", "m1", ReceiptEvent.ARRIVED),
            (shop.app_key, "d2", "m1", ReceiptEvent.ARRIVED),
            (other.app_key, "d1", "m2", ReceiptEvent.ARRIVED),  # other wants opened only
        ]
    )
    rows = outbox(wstore)
    assert [(r["webhook_id"], r["type"], r["state"]) for r in rows] == [
        (hook["webhook_id"], "delivery.arrived", "pending")
    ] * 2
    first = rows[0]["payload"]
    assert first == {
        "id": first["id"],
        "type": "delivery.arrived",
        "at": START,
        "app_key": shop.app_key,
        "msg_id": "m1",
        "device_id": "d1",
        "delivery_id": "m1:d1",
    }
    assert rows[0]["payload"]["id"] < rows[1]["payload"]["id"]  # ids sort in the order written


def test_opened_brings_the_implied_arrival_and_two_webhooks_share_the_event_id(wstore: Store) -> None:
    app = wstore.apps.create_app("shop")
    a = wstore.webhooks.create(app.app_key, "https://a.example/", ["delivery.arrived", "delivery.opened"])
    b = wstore.webhooks.create(app.app_key, "https://b.example/", ["delivery.opened"])
    accept(wstore, app.app_key, "m1", ["d1"])
    wstore.messages.transition([("m1", "d1")], DeliveryState.PUBLISHED)
    wstore.messages.apply_receipt(app.app_key, "d1", "m1", ReceiptEvent.OPENED)

    rows_a, rows_b = outbox(wstore, a["webhook_id"]), outbox(wstore, b["webhook_id"])
    assert [(r["type"], r["payload"].get("detail")) for r in rows_a] == [
        ("delivery.arrived", "implied"),
        ("delivery.opened", None),
    ]
    assert [r["type"] for r in rows_b] == ["delivery.opened"]
    assert rows_b[0]["payload"]["id"] == rows_a[1]["payload"]["id"]


def test_a_rolled_back_transition_leaves_no_event(wstore: Store) -> None:
    app = wstore.apps.create_app("shop")
    wstore.webhooks.create(app.app_key, "https://a.example/", ["delivery.failed"])
    accept(wstore, app.app_key, "m1", ["d1"])
    with pytest.raises(RuntimeError), wstore._tx():
        wstore.messages.transition([("m1", "d1")], DeliveryState.FAILED, "boom")
        assert len(outbox(wstore)) == 1
        raise RuntimeError("the caller's transaction fails after the listener ran")
    assert outbox(wstore) == []
    wstore.messages.transition([("m1", "d1")], DeliveryState.FAILED, "boom")
    assert [r["payload"]["detail"] for r in outbox(wstore)] == ["boom"]


def test_expiry_token_task_and_alarm_events(wstore: Store, clock: FakeClock) -> None:
    app = wstore.apps.create_app("shop")
    hook = wstore.webhooks.create(
        app.app_key, "https://a.example/", ["delivery.expired", "token.removed", "task.done", "alarm"]
    )
    accept(wstore, app.app_key, "m1", ["d1"], expires_at=START + 5)
    clock.advance(10)
    wstore.messages.expire_due()

    device = wstore.devices.register_device(app.app_key, "i1", "ios").device_id
    token = "a" * 64
    wstore.devices.set_vendor_token(app.app_key, device, "apns", token)
    accept(wstore, app.app_key, "m2", [device])
    dead = VendorOutcome("m2", device, "dropped_token", "Unregistered", token)
    wstore.vendors.record_vendor_outcomes(app.app_key, "apns", [dead])
    wstore.vendors.record_vendor_outcomes(app.app_key, "apns", [dead])  # tombstoned already: no second event

    wstore.messages.accept_message(
        msg_id="m3",
        app_key=app.app_key,
        kind="tags",
        target={"tags": "x"},
        envelope=b"{}",
        policy={},
        expires_at=START + 3600,
        device_ids=[],
        task_id="t1",
    )
    wstore.tasks.finish_task("t1", "done")
    wstore.tasks.finish_task("t1", "failed", "late")  # already finished: nothing

    wstore.vendors.raise_alarm(app.app_key, "apns", "InvalidProviderToken")
    wstore.vendors.raise_alarm(app.app_key, "apns", "InvalidProviderToken")  # the same alarm again

    docs = [r["payload"] for r in outbox(wstore, hook["webhook_id"])]
    assert [d["type"] for d in docs] == ["delivery.expired", "token.removed", "task.done", "alarm"]
    assert docs[0]["detail"] == "ttl"
    assert {k: docs[1][k] for k in ("device_id", "vendor", "reason", "token", "token_sha256")} == {
        "device_id": device,
        "vendor": "apns",
        "reason": "Unregistered",
        "token": "…" + token[-6:],
        "token_sha256": vendor_token_hash(token),
    }
    assert {k: docs[2][k] for k in ("task_id", "msg_id", "state", "error")} == {
        "task_id": "t1",
        "msg_id": "m3",
        "state": "done",
        "error": None,
    }
    assert {k: docs[3][k] for k in ("vendor", "reason")} == {
        "vendor": "apns",
        "reason": "InvalidProviderToken",
    }


def test_batches_are_per_type_bounded_and_keep_their_delivery_id(wstore: Store, clock: FakeClock) -> None:
    app = wstore.apps.create_app("shop")
    hook = wstore.webhooks.create(app.app_key, "https://a.example/", ["delivery.arrived", "delivery.opened"])
    wid = hook["webhook_id"]
    devices = [f"d{i:04d}" for i in range(MAX_BATCH + 20)]
    accept(wstore, app.app_key, "m1", devices)
    wstore.messages.transition([("m1", d) for d in devices], DeliveryState.PUBLISHED)
    wstore.messages.apply_receipt(
        app.app_key, devices[0], "m1", ReceiptEvent.OPENED
    )  # arrived (implied), opened
    wstore.messages.apply_receipts([(app.app_key, d, "m1", ReceiptEvent.ARRIVED) for d in devices[1:]])
    assert wstore.webhooks.outlook(wid) == (False, MAX_BATCH)

    first = wstore.webhooks.take_batch(wid)
    assert first is not None and first.event_type == "delivery.arrived"
    assert first.secret == hook["secret"] and first.url == "https://a.example/"
    events = json.loads(first.body)
    assert len(events) == MAX_BATCH and {e["type"] for e in events} == {"delivery.arrived"}
    assert wstore.webhooks.outlook(wid) == (True, 21)

    assert wstore.webhooks.failed(wid, first.batch_id, "HTTP 503") == 0
    again = wstore.webhooks.take_batch(wid)
    assert again is not None
    assert (again.batch_id, again.body) == (first.batch_id, first.body)  # a retry: same id, same events

    wstore.webhooks.delivered(wid, first.batch_id)
    second = wstore.webhooks.take_batch(wid)
    assert second is not None and second.batch_id != first.batch_id
    assert second.event_type == "delivery.opened" and len(json.loads(second.body)) == 1
    wstore.webhooks.delivered(wid, second.batch_id)
    third = wstore.webhooks.take_batch(wid)
    assert third is not None and third.event_type == "delivery.arrived"
    assert len(json.loads(third.body)) == 20
    wstore.webhooks.delivered(wid, third.batch_id)
    assert wstore.webhooks.take_batch(wid) is None
    assert outbox(wstore) == []
    (listed,) = wstore.webhooks.for_app(app.app_key)
    assert (listed["state"], listed["backlog"], listed["last_success_at"]) == ("active", 0, START)


def test_failing_webhook_is_listed_then_gives_events_up_after_24_hours(
    wstore: Store, clock: FakeClock
) -> None:
    app = wstore.apps.create_app("shop")
    wid = wstore.webhooks.create(app.app_key, "http://down.example/", ["delivery.failed"])["webhook_id"]
    accept(wstore, app.app_key, "m1", ["d1", "d2"])
    wstore.messages.transition([("m1", "d1")], DeliveryState.FAILED, "x")
    batch = wstore.webhooks.take_batch(wid)
    assert batch is not None
    clock.advance(60)
    wstore.messages.transition([("m1", "d2")], DeliveryState.FAILED, "y")  # a newer event, not in the batch
    wstore.webhooks.failed(wid, batch.batch_id, "ConnectError: refused")

    (listed,) = wstore.webhooks.for_app(app.app_key)
    assert {k: listed[k] for k in ("state", "backlog", "failed_events", "last_error", "failing_since")} == {
        "state": "failing",
        "backlog": 2,
        "failed_events": 0,
        "last_error": "ConnectError: refused",
        "failing_since": START + 60,
    }
    assert listed["last_error_at"] == START + 60 and listed["oldest_pending_at"] == START

    clock.advance(RETRY_SECONDS - 30)  # the first event is over 24 h old, the second not yet
    assert wstore.webhooks.failed(wid, batch.batch_id, "HTTP 500: oops") == 1
    (listed,) = wstore.webhooks.for_app(app.app_key)
    assert (listed["backlog"], listed["failed_events"], listed["state"]) == (1, 1, "failing")
    clock.advance(60)
    nxt = wstore.webhooks.take_batch(wid)
    assert nxt is not None and [e["detail"] for e in json.loads(nxt.body)] == ["y"]
    assert wstore.webhooks.failed(wid, nxt.batch_id, "HTTP 500: oops") == 1
    (listed,) = wstore.webhooks.for_app(app.app_key)
    assert (listed["backlog"], listed["failed_events"], listed["state"]) == (0, 2, "failed")
    assert wstore.webhooks.take_batch(wid) is None  # given-up events are kept, not resent

    clock.advance(webhooks_module.KEEP_FAILED_SECONDS + 1)
    assert wstore.webhooks.prune() == 2


def test_registration_limits_and_removal(wstore: Store) -> None:
    app = wstore.apps.create_app("shop")
    created = [
        wstore.webhooks.create(app.app_key, f"https://a.example/{i}", ["alarm"])
        for i in range(MAX_WEBHOOKS_PER_APP)
    ]
    with pytest.raises(InvalidContent) as refused:
        wstore.webhooks.create(app.app_key, "https://a.example/x", ["alarm"])
    assert refused.value.code == "too_many_webhooks"
    sealed = wstore._conn.execute("SELECT secret_enc FROM webhooks").fetchone()[0]
    assert created[0]["secret"].encode() not in bytes(sealed)  # sealed at rest

    other = wstore.apps.create_app("other")
    with pytest.raises(NotFound) as unknown:
        wstore.webhooks.remove(other.app_key, created[0]["webhook_id"])
    assert unknown.value.code == "unknown_webhook"
    wstore.webhooks.remove(app.app_key, created[0]["webhook_id"])
    assert len(wstore.webhooks.for_app(app.app_key)) == MAX_WEBHOOKS_PER_APP - 1


def test_a_webhook_added_by_another_process_is_seen(
    wstore: Store, data_dir: Path, clock: FakeClock, store_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = wstore.apps.create_app("shop")
    accept(wstore, app.app_key, "m1", ["d1", "d2"])
    wstore.messages.transition([("m1", "d1")], DeliveryState.FAILED, "before")  # the map is loaded: empty
    other = Store(data_dir, clock=clock, url=store_url)
    try:
        other.webhooks.create(app.app_key, "https://a.example/", ["delivery.failed"])
    finally:
        other.close()
    monkeypatch.setattr(webhooks_module, "REFRESH_SECONDS", 0.0)  # instead of waiting 2 s
    wstore.messages.transition([("m1", "d2")], DeliveryState.FAILED, "after")
    assert [r["payload"]["detail"] for r in outbox(wstore)] == ["after"]


def test_every_way_a_task_ends_is_one_task_done(wstore: Store) -> None:
    app = wstore.apps.create_app("shop")
    hook = wstore.webhooks.create(app.app_key, "https://a.example/", ["task.done"])

    def task(n: int) -> None:
        wstore.messages.accept_message(
            msg_id=f"m{n}",
            app_key=app.app_key,
            kind="tags",
            target={"tags": "x"},
            envelope=b"{}",
            policy={},
            expires_at=START + 3600,
            device_ids=[],
            task_id=f"t{n}",
        )

    for n in range(4):
        task(n)
    wstore.tasks.finish_task("t0", "failed", "audience query failed")
    wstore.tasks.cancel_task(app.app_key, "t1")
    wstore.messages.cancel_message(app.app_key, "m2")
    wstore.messages.recall(app.app_key, "m3")
    wstore.messages.recall(app.app_key, "m0")  # its task had ended already

    docs = [r["payload"] for r in outbox(wstore, hook["webhook_id"])]
    assert [(d["task_id"], d["msg_id"], d["state"], d["error"]) for d in docs] == [
        ("t0", "m0", "failed", "audience query failed"),
        ("t1", "m1", "cancelled", None),
        ("t2", "m2", "cancelled", None),
        ("t3", "m3", "cancelled", None),
    ]


def test_one_bridge_at_a_time_posts_a_webhook_and_a_lapsed_one_is_taken_over(
    wstore: Store, clock: FakeClock
) -> None:
    app = wstore.apps.create_app("shop")
    wid = wstore.webhooks.create(app.app_key, "https://a.example/", ["delivery.arrived"])["webhook_id"]
    accept(wstore, app.app_key, "m1", ["d1"])
    wstore.messages.transition([("m1", "d1")], DeliveryState.PUBLISHED)
    wstore.messages.apply_receipt(app.app_key, "d1", "m1", ReceiptEvent.ARRIVED)

    first = wstore.webhooks.take_batch(wid, "bridge-a")
    assert first is not None
    assert wstore.webhooks.take_batch(wid, "bridge-b") is None  # bridge a holds the webhook
    assert wstore.webhooks.failed(wid, first.batch_id, "HTTP 503") == 0
    again = wstore.webhooks.take_batch(wid, "bridge-a")  # its own lease: renewed
    assert again is not None and again.batch_id == first.batch_id

    clock.advance(SENDER_LEASE_SECONDS + 1)  # bridge a died: its lease lapses
    taken = wstore.webhooks.take_batch(wid, "bridge-b")
    assert taken is not None and (taken.batch_id, taken.body) == (first.batch_id, first.body)
    assert wstore.webhooks.take_batch(wid, "bridge-a") is None  # b holds it now
    wstore.webhooks.delivered(wid, taken.batch_id)
    assert wstore.webhooks.take_batch(wid, "bridge-b") is None


def test_released_senders_let_another_bridge_send_at_once(wstore: Store) -> None:
    app = wstore.apps.create_app("shop")
    wid = wstore.webhooks.create(app.app_key, "https://a.example/", ["delivery.arrived"])["webhook_id"]
    accept(wstore, app.app_key, "m1", ["d1"])
    wstore.messages.transition([("m1", "d1")], DeliveryState.PUBLISHED)
    wstore.messages.apply_receipt(app.app_key, "d1", "m1", ReceiptEvent.ARRIVED)
    assert wstore.webhooks.take_batch(wid, "bridge-a") is not None
    wstore.webhooks.release_senders(["bridge-z"])  # another bridge's: a keeps the webhook
    assert wstore.webhooks.take_batch(wid, "bridge-b") is None
    wstore.webhooks.release_senders(["bridge-a"])  # a was taken over (or stopped)
    assert wstore.webhooks.take_batch(wid, "bridge-b") is not None
    wstore.webhooks.release_senders()  # a bridge alone on the store, restarted
    assert wstore.webhooks.take_batch(wid, "bridge-c") is not None
