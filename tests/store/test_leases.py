"""Leases on bridge work (mqttpush/store/leases.py): each piece is claimed by one bridge, a lapsed
lease is claimable again, and a task's progress is committed with its batch."""

from __future__ import annotations

import threading
from pathlib import Path

from mqttpush import ids
from mqttpush.store.store import Store
from tests.store.fake_clock import FakeClock

LEASE = 10.0


def _app_with_devices(store: Store, n: int) -> tuple[str, list[str]]:
    app = store.apps.create_app("shop")
    rows = store.devices.import_devices(
        app.app_key, [{"install_id": f"i{i}", "platform": "android"} for i in range(n)]
    )
    return app.app_key, sorted(r["device_id"] for r in rows)


def _message(store: Store, app_key: str, devices: list[str], **kw: object) -> str:
    msg_id = ids.new_msg_id(store.clock.now())
    store.messages.accept_message(
        msg_id=msg_id,
        app_key=app_key,
        kind=str(kw.pop("kind", "devices")),
        target={"devices": devices},
        envelope=b'{"id":"x"}',
        policy={},
        expires_at=store.clock.now() + 3600,
        device_ids=devices,
        **kw,  # type: ignore[arg-type]
    )
    return msg_id


def test_a_due_message_is_claimed_by_one_bridge_until_its_lease_lapses(
    store: Store, clock: FakeClock
) -> None:
    app_key, devices = _app_with_devices(store, 1)
    msg_id = _message(store, app_key, devices, state="scheduled", next_run_at=clock.now() + 5)
    assert store.leases.claim_due_messages("a", LEASE) == []  # not due yet
    clock.advance(5)
    assert store.leases.claim_due_messages("a", LEASE) == [msg_id]
    assert store.leases.claim_due_messages("b", LEASE) == []
    assert store.leases.next_wakeup() == clock.now() + LEASE  # not a busy loop while "a" holds it
    clock.advance(LEASE + 1)  # "a" died before activating it
    assert store.leases.claim_due_messages("b", LEASE) == [msg_id]
    store.leases.release_message(msg_id, "a")  # too late: not a's any more
    assert store.leases.claim_due_messages("c", LEASE) == []
    store.leases.release_message(msg_id, "b")
    assert store.leases.claim_due_messages("c", LEASE) == [msg_id]


def test_a_task_is_walked_by_its_holder_and_resumed_from_its_progress(store: Store, clock: FakeClock) -> None:
    app_key, devices = _app_with_devices(store, 6)
    task_id = "t" + ids.new_msg_id(clock.now())
    msg_id = _message(store, app_key, [], kind="broadcast", task_id=task_id)
    claim = store.leases.claim_task(task_id, "a", LEASE)
    assert claim is not None and claim.progress is None
    assert store.leases.claim_task(task_id, "b", LEASE) is None
    assert store.leases.claim_tasks("b", LEASE) == []
    assert store.leases.add_task_batch(task_id, "b", LEASE, msg_id, devices[:3], devices[2]) is None
    assert store.leases.add_task_batch(task_id, "a", LEASE, msg_id, devices[:3], devices[2]) == devices[:3]

    clock.advance(LEASE + 1)  # "a" was killed here
    assert store.leases.claim_tasks("b", LEASE) == [task_id]
    claim = store.leases.claim_task(task_id, "b", LEASE)
    assert claim is not None and claim.progress == devices[2]
    assert (
        store.leases.add_task_batch(task_id, "a", LEASE, msg_id, devices[3:], devices[5]) is None
    )  # a woke up
    # "b" repeats a batch "a" committed (idempotent) and walks on
    assert store.leases.add_task_batch(task_id, "b", LEASE, msg_id, devices[2:], devices[5]) == devices[3:]
    assert sorted(store.messages.accepted_devices(msg_id)) == devices  # each device once
    store.tasks.finish_task(task_id, "done")
    assert store.leases.claim_task(task_id, "c", LEASE) is None
    assert store.leases.claim_tasks("c", LEASE) == []


def test_an_empty_batch_still_moves_progress_and_renews_the_lease(store: Store, clock: FakeClock) -> None:
    app_key, _ = _app_with_devices(store, 1)
    task_id = "t" + ids.new_msg_id(clock.now())
    msg_id = _message(store, app_key, [], kind="broadcast", task_id=task_id)
    assert store.leases.claim_task(task_id, "a", LEASE) is not None
    clock.advance(LEASE - 1)
    assert store.leases.add_task_batch(task_id, "a", LEASE, msg_id, [], "d-zzz") == []
    clock.advance(LEASE - 1)  # past the first lease, within the renewed one
    assert store.leases.claim_tasks("b", LEASE) == []
    assert store.leases.task_lease(task_id) == ("a", clock.now() + 1, "d-zzz")


def test_a_repush_is_claimed_once_and_fires_again_if_its_bridge_dies(store: Store, clock: FakeClock) -> None:
    app_key, devices = _app_with_devices(store, 2)
    msg_id = _message(store, app_key, devices)
    from mqttpush.models import DeliveryState

    store.messages.transition([(msg_id, d) for d in devices], DeliveryState.PUBLISHED)
    store.messages.set_repush([(msg_id, d) for d in devices], clock.now() + 60)
    clock.advance(60)
    first = store.leases.claim_repushes(LEASE)
    assert sorted(d.device_id for d in first) == devices
    assert first[0].msg_id == msg_id and first[0].app_key == app_key and first[0].repushes == 0
    assert store.leases.claim_repushes(LEASE) == []
    store.messages.mark_repushed(
        msg_id, devices[0], None
    )  # done for devices[0]; the bridge died before devices[1]
    clock.advance(LEASE + 1)
    again = store.leases.claim_repushes(LEASE)
    assert [(d.device_id, d.repushes) for d in again] == [(devices[1], 0)]


def test_a_lapsed_bridge_is_taken_over_once(store: Store, clock: FakeClock) -> None:
    assert store.leases.heartbeat("a", LEASE)
    assert store.leases.heartbeat("b", LEASE)
    assert store.leases.take_over("b") == []
    clock.advance(LEASE / 2)
    store.leases.heartbeat("b", LEASE)
    clock.advance(LEASE / 2 + 1)  # "a" stopped renewing; "b" did
    assert store.leases.take_over("b") == ["a"]
    assert store.leases.take_over("c") == []
    rows = {r["owner"]: r for r in store.leases.bridges()}
    assert rows["a"]["taken_by"] == "b" and rows["b"]["taken_by"] is None
    assert not store.leases.heartbeat("a", LEASE)  # it was only frozen: told it had been taken over
    assert store.leases.heartbeat("a", LEASE)


def test_a_clean_stop_hands_the_lease_and_its_tasks_over_at_once(store: Store, clock: FakeClock) -> None:
    app_key, _ = _app_with_devices(store, 1)
    task_id = "t" + ids.new_msg_id(clock.now())
    _message(store, app_key, [], kind="broadcast", task_id=task_id)
    store.leases.heartbeat("a", LEASE)
    assert store.leases.claim_task(task_id, "a", LEASE) is not None
    store.leases.hand_over("a")
    assert store.leases.take_over("b") == ["a"]
    assert store.leases.claim_tasks("b", LEASE) == [task_id]


def test_alone_takes_over_leases_that_have_not_lapsed(store: Store, clock: FakeClock) -> None:
    app_key, _ = _app_with_devices(store, 1)
    task_id = "t" + ids.new_msg_id(clock.now())
    _message(store, app_key, [], kind="broadcast", task_id=task_id)
    store.leases.heartbeat("killed", LEASE)
    assert store.leases.claim_task(task_id, "killed", LEASE) is not None
    assert store.leases.take_over("restarted") == []
    assert store.leases.take_over("restarted", alone=True) == ["killed"]
    assert store.leases.claim_tasks("restarted", LEASE, alone=True) == [task_id]


def test_two_processes_claiming_at_once_get_each_message_once(data_dir: Path, clock: FakeClock) -> None:
    """Two connections to one file (two bridge processes), claiming concurrently from threads."""
    first = Store(data_dir, clock=clock)
    second = Store(data_dir, clock=clock)
    try:
        app_key, devices = _app_with_devices(first, 1)
        due = {
            _message(first, app_key, devices, state="scheduled", next_run_at=clock.now()) for _ in range(400)
        }
        got: dict[str, list[str]] = {"a": [], "b": []}

        def claim(store: Store, owner: str) -> None:
            while batch := store.leases.claim_due_messages(owner, LEASE, limit=7):
                got[owner] += batch

        threads = [threading.Thread(target=claim, args=(s, o)) for s, o in ((first, "a"), (second, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(got["a"] + got["b"]) == sorted(due)
        assert not set(got["a"]) & set(got["b"])
    finally:
        first.close()
        second.close()
