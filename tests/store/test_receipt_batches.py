"""Receipts applied set-based (issue 14): a batch gives the same fanouts, final states and history
as the same receipts applied one at a time, and both follow the rules of docs/delivery.md, written
out again here as a tiny reference model."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mqttpush.clock import ManualClock
from mqttpush.models import PENDING_STATES, DeliveryState, ReceiptEvent, advances
from mqttpush.store.store import Store
from tests.store.fake_clock import START, FakeClock
from tests.store.test_messages import accept

PROPS = settings(max_examples=120, deadline=None)

DEVICES = ["d0", "d1", "d2", "d3", "d4"]
LATE = 100.0  # receipts come this long after the set-up; short-TTL messages have expired by then

# A delivery's state before the receipts, reached from `accepted` by one transition (None: none).
START_STATES = st.sampled_from(
    [
        None,
        DeliveryState.ACCEPTED,
        DeliveryState.QUEUED,
        DeliveryState.PUBLISHED,
        DeliveryState.FORWARDED,
        DeliveryState.ARRIVED,
        DeliveryState.OPENED,
        DeliveryState.DISMISSED,
        DeliveryState.CANCELLED,
        DeliveryState.DROPPED,
        DeliveryState.FAILED,
        DeliveryState.EXPIRED,
    ]
)


@dataclass(frozen=True)
class MessageSpec:
    msg_id: str
    app: int  # which of the two apps sent it
    broadcast: bool
    expired: bool
    deliveries: tuple[DeliveryState | None, ...]  # one per device in DEVICES


messages = st.lists(
    st.builds(
        MessageSpec,
        msg_id=st.just(""),
        app=st.integers(0, 1),
        broadcast=st.booleans(),
        expired=st.booleans(),
        deliveries=st.tuples(*[START_STATES] * len(DEVICES)),
    ),
    min_size=1,
    max_size=4,
).map(
    lambda specs: [
        MessageSpec(f"m{i}", s.app, s.broadcast, s.expired, s.deliveries) for i, s in enumerate(specs)
    ]
)

# (app index, device, msg index, event); index 9 stands for an id no message has.
receipt_choices = st.tuples(
    st.integers(0, 1),
    st.sampled_from([*DEVICES, "d9"]),
    st.integers(0, 9),
    st.sampled_from(list(ReceiptEvent)),
)


@contextmanager
def world(specs: list[MessageSpec]) -> Iterator[tuple[Store, list[str]]]:
    """A store holding ``specs``, its clock moved on by LATE; and the two apps' keys."""
    with tempfile.TemporaryDirectory() as tmp:
        clock = ManualClock(START)
        store = Store(Path(tmp), clock=clock)
        try:
            apps = [store.apps.create_app("a").app_key, store.apps.create_app("b").app_key]
            for spec in specs:
                devices = [d for d, s in zip(DEVICES, spec.deliveries, strict=True) if s is not None]
                ttl = 10 if spec.expired else 3600
                accept(store, apps[spec.app], spec.msg_id, devices, broadcast=spec.broadcast, ttl=ttl)
                for device_id, state in zip(DEVICES, spec.deliveries, strict=True):
                    if state is not None and state is not DeliveryState.ACCEPTED:
                        store.messages.transition([(spec.msg_id, device_id)], state)
            clock.advance(LATE)
            yield store, apps
        finally:
            store.close()


def receipts_of(
    choices: list[tuple[int, str, int, ReceiptEvent]], specs: list[MessageSpec], apps: list[str]
) -> list[tuple[str, str, str, ReceiptEvent]]:
    return [(apps[a], d, specs[m].msg_id if m < len(specs) else "unknown1", e) for a, d, m, e in choices]


def statuses(store: Store, specs: list[MessageSpec], apps: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in specs:
        status = store.messages.message_status(apps[spec.app], spec.msg_id)
        assert status is not None
        out[spec.msg_id] = status.deliveries
    return out


def reference(
    specs: list[MessageSpec], apps: list[str], receipts: list[tuple[str, str, str, ReceiptEvent]]
) -> tuple[list[str | None], dict[tuple[str, str], DeliveryState], dict[tuple[str, str], list[Any]]]:
    """docs/delivery.md, one receipt at a time: the fanouts, final states and new history rows."""
    by_id = {s.msg_id: s for s in specs}
    states = {
        (s.msg_id, d): st_
        for s in specs
        for d, st_ in zip(DEVICES, s.deliveries, strict=True)
        if st_ is not None
    }
    added: dict[tuple[str, str], list[Any]] = {}
    fanouts: list[str | None] = []
    for app_key, device_id, msg_id, event in receipts:
        spec = by_id.get(msg_id)
        if spec is None or apps[spec.app] != app_key:
            fanouts.append(None)
            continue
        fanout = "topic" if spec.broadcast else "inbox"
        key, rows = (msg_id, device_id), added.setdefault((msg_id, device_id), [])
        current = states.get(key)
        if current is None and not spec.broadcast:
            fanouts.append(None)
            continue
        fanouts.append(fanout)
        if current is None:
            if spec.expired:
                continue  # too late to join the broadcast
            rows += [("accepted", None), ("published", "joined broadcast")]
            current = DeliveryState.PUBLISHED
        new = DeliveryState(event.value)
        if spec.expired and current in PENDING_STATES:
            rows.append(("expired", "ttl"))
            current = DeliveryState.EXPIRED
        elif advances(current, new):
            if new is not DeliveryState.ARRIVED and advances(current, DeliveryState.ARRIVED):
                rows.append(("arrived", "implied"))
            rows.append((new.value, None))
            current = new
        states[key] = current
    return fanouts, states, {k: v for k, v in added.items() if v}


@PROPS
@given(specs=messages, choices=st.lists(receipt_choices, max_size=30))
def test_a_batch_is_the_receipts_one_at_a_time(
    specs: list[MessageSpec], choices: list[tuple[int, str, int, ReceiptEvent]]
) -> None:
    with world(specs) as (batched, apps), world(specs) as (single, single_apps):
        receipts = receipts_of(choices, specs, apps)
        before = statuses(batched, specs, apps)
        fanouts = batched.messages.apply_receipts(receipts)
        assert fanouts == [
            single.messages.apply_receipt(*r) for r in receipts_of(choices, specs, single_apps)
        ]
        after = statuses(batched, specs, apps)
        assert after == statuses(single, specs, single_apps)

    want_fanouts, want_states, want_rows = reference(specs, apps, receipts)
    assert fanouts == want_fanouts
    got_states = {(m, d.device_id): DeliveryState(d.state) for m, ds in after.items() for d in ds}
    assert got_states == want_states
    old = {(m, d.device_id): len(d.history) for m, ds in before.items() for d in ds}
    got_rows = {
        (m, d.device_id): [(h.state, h.detail) for h in d.history[old.get((m, d.device_id), 0) :]]
        for m, ds in after.items()
        for d in ds
    }
    assert {k: v for k, v in got_rows.items() if v} == want_rows
    for m, ds in after.items():
        for d in ds:
            moved = (m, d.device_id) in want_rows
            # a receipt that moves nothing leaves the delivery untouched
            assert (d.updated_at == batched.clock.now()) == moved or old.get((m, d.device_id)) is None


def test_a_large_batch_of_single_device_pushes_is_read_in_chunks(store: Store, clock: FakeClock) -> None:
    # more messages than one IN (...) chunk, more deliveries than one key chunk, and repeats
    app = store.apps.create_app("a").app_key
    for i in range(1100):
        accept(store, app, f"m{i}", ["d1"])
    store.messages.transition([(f"m{i}", "d1") for i in range(1100)], DeliveryState.PUBLISHED)
    clock.advance(1)
    arrived = [(app, "d1", f"m{i}", ReceiptEvent.ARRIVED) for i in range(1100)]
    opened = [(app, "d1", f"m{i}", ReceiptEvent.OPENED) for i in range(0, 1100, 2)]
    assert store.messages.apply_receipts(arrived + opened + arrived[:10]) == ["inbox"] * (1100 + 550 + 10)
    for i in (0, 1, 398, 399, 400, 401, 998, 1099):
        status = store.messages.message_status(app, f"m{i}")
        assert status is not None
        history = [h.state for h in status.deliveries[0].history]
        assert history == ["accepted", "published", "arrived"] + (["opened"] if i % 2 == 0 else [])


def test_one_broadcast_joined_twice_in_a_batch_is_one_delivery(store: Store) -> None:
    app = store.apps.create_app("a").app_key
    accept(store, app, "b1", [], broadcast=True)
    assert store.messages.apply_receipts(
        [(app, "late", "b1", ReceiptEvent.ARRIVED), (app, "late", "b1", ReceiptEvent.OPENED)]
    ) == ["topic", "topic"]
    status = store.messages.message_status(app, "b1")
    assert status is not None
    [delivery] = status.deliveries
    assert (delivery.device_id, delivery.state, delivery.channel) == ("late", "opened", "mqtt")
    assert [(h.state, h.detail) for h in delivery.history] == [
        ("accepted", None),
        ("published", "joined broadcast"),
        ("arrived", None),
        ("opened", None),
    ]
