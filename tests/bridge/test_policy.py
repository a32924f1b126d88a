"""Issue 5 policy, on an injectable clock: TTL, schedules, approval, idempotency, cancel, recall,
priority, pacing, quiet hours, caps, re-push, inbox bound."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from queue import Queue
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bridge.dispatcher import Outbound
from bridge.policy import SendPolicy
from mqttpush.device import DeviceClient
from mqttpush.errors import ClientError
from mqttpush.models import ReceiptEvent
from mqttpush.store import Store
from tests.conftest import Running
from tests.mqtt_raw import RawClient


def _push(r: Running, devices: list[str], **policy: Any) -> dict[str, Any]:
    with r.client() as c:
        return c.push({"target": {"devices": devices}, "notification": {"title": "t"}, "policy": policy})


def _states(r: Running, msg_id: str) -> dict[str, str]:
    with r.client() as c:
        return {d["device_id"]: d["state"] for d in c.message(msg_id)["deliveries"]}


def _retained(r: Running, msg_id: str) -> list[str]:
    return [t for t in r.server.broker.retained_topics() if t.endswith(msg_id)]


def test_ttl_expiry_clears_the_inbox(clocked: Running) -> None:
    r = clocked
    ((device, _token),) = r.register()
    msg_id = _push(r, [device], ttl=60)["msg_id"]
    r.advance(0)
    assert _states(r, msg_id) == {device: "published"} and _retained(r, msg_id)
    r.advance(59)
    assert _states(r, msg_id) == {device: "published"}
    r.advance(2)
    assert _states(r, msg_id) == {device: "expired"}
    assert _retained(r, msg_id) == []


def test_start_at_sends_later(clocked: Running) -> None:
    r = clocked
    ((device, _),) = r.register()
    now = r.server.clock.now()
    msg_id = _push(r, [device], start_at=now + 3600)["msg_id"]
    with r.client() as c:
        doc = c.message(msg_id)
    assert (doc["state"], doc["next_run_at"]) == ("scheduled", now + 3600)
    r.advance(3599)
    assert _states(r, msg_id) == {device: "accepted"} and _retained(r, msg_id) == []
    r.advance(1)
    assert _states(r, msg_id) == {device: "published"}
    payload = json.loads(r.server.broker.retained_payload(_retained(r, msg_id)[0]) or b"null")
    assert payload["sent_at"] == now + 3600  # stamped when it went out


def test_recurring_weekly_series_in_a_time_zone(clocked: Running) -> None:
    r = clocked
    ((device, _),) = r.register()
    berlin = ZoneInfo("Europe/Berlin")
    now = r.server.clock.now()
    schedule = {"weekly": {"days": ["mon", "thu"], "at": "09:00"}, "tz": "Europe/Berlin", "count": 2}
    parent = _push(r, [device], schedule=schedule)["msg_id"]
    with r.client() as c:
        doc = c.message(parent)
    first = datetime.fromtimestamp(doc["next_run_at"], berlin)
    assert doc["state"] == "scheduled" and (first.hour, first.minute) == (9, 0)
    assert first.strftime("%a") in ("Mon", "Thu") and doc["next_run_at"] > now
    r.advance(doc["next_run_at"] - now)
    with r.client() as c:
        doc = c.message(parent)
        (child,) = doc["occurrences"]
        assert _states(r, child) == {device: "published"}
        second = datetime.fromtimestamp(doc["next_run_at"], berlin)
        assert second > first and (second.hour, second.minute) == (9, 0)
        r.advance(doc["next_run_at"] - r.server.clock.now())
        doc = c.message(parent)
    assert len(doc["occurrences"]) == 2 and doc["state"] == "done"


def test_approval_draft_then_approved_then_sent(clocked: Running) -> None:
    r = clocked
    ((device, _),) = r.register()
    with r.client() as c:
        c.put_settings({"require_approval": True})
        msg_id = _push(r, [device])["msg_id"]
        assert c.message(msg_id)["state"] == "draft"
        assert [m["msg_id"] for m in c.messages(state="draft")] == [msg_id]
        r.advance(10)
        assert _states(r, msg_id) == {device: "accepted"}
        doc = c.approve(msg_id, "alice")
        assert (doc["approved_by"], doc["approved_at"]) == ("alice", r.server.clock.now())
        r.advance(0)
        assert c.message(msg_id)["state"] == "active"
        assert _states(r, msg_id) == {device: "published"}
        with pytest.raises(ClientError) as info:
            c.approve(msg_id, "bob")
        assert info.value.code == "not_a_draft"


def test_biz_id_returns_the_same_message_and_never_sends_twice(clocked: Running) -> None:
    r = clocked
    ((device, _),) = r.register()
    first = _push(r, [device], biz_id="order-42-shipped")
    again = _push(r, [device], biz_id="order-42-shipped")
    assert first == again
    with r.client() as c:
        task = c.push(
            {"target": {"broadcast": True}, "notification": {"title": "x"}, "policy": {"biz_id": "b1"}}
        )
        assert (
            c.push(
                {"target": {"broadcast": True}, "notification": {"title": "x"}, "policy": {"biz_id": "b1"}}
            )
            == task
        )
    assert len(Store(r.data_dir).messages.list_messages(r.app_key, None, 100)) == 2


def test_cancel_a_scheduled_send(clocked: Running) -> None:
    r = clocked
    ((device, _),) = r.register()
    msg_id = _push(r, [device], start_at=r.server.clock.now() + 60)["msg_id"]
    with r.client() as c:
        assert c.cancel(msg_id)["state"] == "cancelled"
        r.advance(120)
        assert _states(r, msg_id) == {device: "cancelled"} and _retained(r, msg_id) == []
        with pytest.raises(ClientError) as info:
            c.cancel(msg_id)
        assert (info.value.status, info.value.code) == (409, "already_finished")


def test_recall_revokes_on_the_device(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    got: Queue[dict[str, Any]] = Queue()
    revoked: Queue[str] = Queue()
    client = DeviceClient.from_server(r.url, device, token, on_message=got.put, on_revoke=revoked.put)
    client.connect()
    try:
        msg_id = _push(r, [device])["msg_id"]
        assert got.get(timeout=10)["id"] == msg_id
        with r.client() as c:
            assert c.recall(msg_id)["revoked_devices"] == 1
        assert revoked.get(timeout=10) == msg_id
        d = r.wait_state(msg_id, device, "cancelled")
        assert "recalled" in [h.get("detail") for h in d["history"]]
    finally:
        client.disconnect()


async def test_high_priority_overtakes_normal(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    c, _, _ = await RawClient.connect(r.mqtt_port, device, device, token)
    assert await c.subscribe(f"mqttpush/{r.app_key}/d/{device}/m/+") == [1]
    store = r.server.store

    async def accept_both_then_submit() -> list[str]:
        ids = []
        for n in ("normal", "high"):
            msg_id = f"0000000000{n}"
            await store.run(
                store.messages.accept_message,
                msg_id=msg_id,
                app_key=r.app_key,
                kind="devices",
                target={"devices": [device]},
                envelope=json.dumps({"id": msg_id}).encode(),
                policy={},
                expires_at=r.server.clock.now() + 60,
                device_ids=[device],
            )
            ids.append(msg_id)
        # both queued before the dispatcher runs again: it must take the high one first
        r.server.dispatcher.submit(Outbound(ids[0], r.app_key, b'{"id": "0000000000normal"}', (device,)))
        r.server.dispatcher.submit(
            Outbound(ids[1], r.app_key, b'{"id": "0000000000high"}', (device,), policy=SendPolicy(priority=0))
        )
        return ids

    await asyncio.to_thread(r.call, accept_both_then_submit())
    first, second = await c.next_publish(10), await c.next_publish(10)
    assert first is not None and second is not None
    assert [json.loads(first.payload)["id"], json.loads(second.payload)["id"]] == [
        "0000000000high",
        "0000000000normal",
    ]
    await c.disconnect()


def test_pacing_spreads_deliveries(clocked: Running) -> None:
    r = clocked
    devices = [d for d, _ in r.register(6)]
    msg_id = _push(r, devices, pace={"per_second": 2})["msg_id"]
    r.advance(0)

    def published() -> int:
        return sum(s == "published" for s in _states(r, msg_id).values())

    assert published() == 1
    r.advance(0.5)
    assert published() == 2
    r.advance(1.0)
    assert published() == 4
    r.advance(10)
    assert published() == 6
    over = _push(r, devices, pace={"over_minutes": 1})["msg_id"]
    r.advance(0)
    assert sum(s == "published" for s in _states(r, over).values()) == 1
    r.advance(30)
    assert sum(s == "published" for s in _states(r, over).values()) == 4  # one every 10 s


def test_quiet_hours_in_the_device_time_zone(clocked: Running) -> None:
    r = clocked
    (tokyo, _), (berlin, _) = r.register(2)
    with r.client() as c:
        c.update_device(tokyo, timezone="Asia/Tokyo")
        c.update_device(berlin, timezone="Europe/Berlin")
        c.put_settings({"quiet_hours": {"start": "22:00", "end": "08:00"}})
    now = r.server.clock.now()
    local_tokyo = datetime.fromtimestamp(now, ZoneInfo("Asia/Tokyo"))
    local_berlin = datetime.fromtimestamp(now, ZoneInfo("Europe/Berlin"))
    # ManualClock starts at 2027-01-15 08:00 UTC: 17:00 in Tokyo, 09:00 in Berlin; move to 23:00 Tokyo
    assert (local_tokyo.hour, local_berlin.hour) == (17, 9)
    r.advance(6 * 3600)
    msg_id = _push(r, [tokyo, berlin])["msg_id"]
    r.advance(0)
    assert _states(r, msg_id) == {tokyo: "queued", berlin: "published"}
    r.advance(8 * 3600)  # 07:00 in Tokyo: still quiet
    assert _states(r, msg_id)[tokyo] == "queued"
    r.advance(3600)  # 08:00
    assert _states(r, msg_id)[tokyo] == "published"
    urgent = _push(r, [tokyo], quiet_hours=False)["msg_id"]  # a message may ignore the app's quiet hours
    r.advance(0)
    assert _states(r, urgent) == {tokyo: "published"}


def test_daily_cap_drops_or_holds(clocked: Running) -> None:
    r = clocked
    ((device, _),) = r.register()
    sent = [_push(r, [device], daily_cap=2, over_cap="drop")["msg_id"] for _ in range(3)]
    r.advance(0)
    assert [_states(r, m)[device] for m in sent] == ["published", "published", "dropped"]
    with r.client() as c:
        assert c.message(sent[2])["deliveries"][0]["error"] == "capped"
    held = _push(r, [device], daily_cap=2)["msg_id"]
    r.advance(0)
    assert _states(r, held) == {device: "queued"}
    r.advance(24 * 3600)
    assert _states(r, held) == {device: "published"}


def test_repush_until_opened(clocked: Running) -> None:
    r = clocked
    (a, _), (b, _) = r.register(2)
    msg_id = _push(r, [a, b], repush={"after": 600, "max": 2})["msg_id"]
    r.advance(0)
    r.call(
        r.server.store.run(
            r.server.store.messages.apply_receipt,
            r.app_key,
            a,
            msg_id,
            ReceiptEvent.OPENED,
        )
    )
    r.advance(600)
    topic = f"mqttpush/{r.app_key}/d/{b}/m/{msg_id}"
    assert json.loads(r.server.broker.retained_payload(topic) or b"null")["repush"] == 1
    r.advance(600)
    assert json.loads(r.server.broker.retained_payload(topic) or b"null")["repush"] == 2
    r.advance(6000)
    assert json.loads(r.server.broker.retained_payload(topic) or b"null")["repush"] == 2  # at most max
    with r.client() as c:
        history = {d["device_id"]: d["history"] for d in c.message(msg_id)["deliveries"]}
    assert [h.get("detail") for h in history[b] if h["state"] == "published"] == [None, "repush", "repush"]
    assert [h.get("detail") for h in history[a] if h["state"] == "published"] == [None]  # opened: no re-push


def test_inbox_bound_drops_the_oldest(clocked: Running) -> None:
    r = clocked
    ((device, _),) = r.register()
    with r.client() as c:
        c.put_settings({"inbox_limit": 3})
    msgs = []
    for _ in range(5):
        msgs.append(_push(r, [device])["msg_id"])
        r.advance(1)
    assert [_states(r, m)[device] for m in msgs] == [
        "dropped",
        "dropped",
        "published",
        "published",
        "published",
    ]
    assert sorted(t.rsplit("/", 1)[1] for t in r.server.broker.retained_topics()) == sorted(msgs[2:])
    with r.client() as c:
        assert c.message(msgs[0])["deliveries"][0]["error"] == "inbox_full"


def test_bad_policies_are_refused(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    cases = [
        ({"schedule": {"cron": "61 * * * *"}}, "bad_schedule"),
        ({"schedule": {"daily": "25:00"}}, "bad_policy"),
        ({"schedule": {"daily": "09:00", "tz": "Mars/Olympus"}}, "bad_timezone"),
        ({"pace": {"per_second": 0}}, "bad_policy"),
        ({"quiet_hours": {"start": "22:00"}}, "bad_policy"),
        ({"repush": {"after": 60, "max": 99}}, "bad_policy"),
        ({"priority": "urgent"}, "invalid_request"),
        ({"unknown": 1}, "invalid_request"),
    ]
    for policy, code in cases:
        with pytest.raises(ClientError) as info:
            _push(r, [device], **policy)
        assert (info.value.status, info.value.code) == (422, code), policy
