"""The console's store queries (``store.console``) on each engine: sessions, and keyset pages that
neither skip nor repeat a row, ties in creation time included (docs/console.md)."""

from __future__ import annotations

import json

import pytest

from mqttpush import ids
from mqttpush.errors import InvalidContent, NotFound
from mqttpush.models import DeliveryState
from mqttpush.store.store import Store
from tests.store.fake_clock import FakeClock


def _app_with_devices(store: Store, n: int) -> tuple[str, list[str]]:
    app = store.apps.create_app("console")
    rows = [{"install_id": f"i{k}", "platform": "android", "alias": f"user{k % 2}"} for k in range(n)]
    return app.app_key, [d["device_id"] for d in store.devices.import_devices(app.app_key, rows)]


def _push(store: Store, app_key: str, devices: list[str], title: str, *, task: bool = False) -> str:
    msg_id = ids.new_msg_id(store.clock.now())
    store.messages.accept_message(
        msg_id=msg_id,
        app_key=app_key,
        kind="tags" if task else "devices",
        target={"devices": devices},
        envelope=json.dumps({"id": msg_id, "title": title}).encode(),
        policy={"ttl": 60},
        expires_at=store.clock.now() + 60,
        device_ids=devices,
        task_id="t" + msg_id if task else None,
    )
    return msg_id


def test_sessions_live_until_expiry_or_sign_out(store: Store, clock: FakeClock) -> None:
    app_key, _ = _app_with_devices(store, 1)
    cookie, session = store.console.create_session(app_key, "secret", None, 3600)
    found = store.console.session(cookie)
    assert found is not None and (found.app_key, found.csrf_token) == (app_key, session.csrf_token)
    assert store.console.session(cookie + "x") is None
    other, _ = store.console.create_session(app_key, "secret", None, 3600)
    store.console.end_session(cookie)
    assert store.console.session(cookie) is None
    assert store.console.session(other) is not None
    clock.advance(3600)
    assert store.console.session(other) is None


def test_a_token_session_ends_with_its_token(store: Store) -> None:
    app_key, _ = _app_with_devices(store, 1)
    token = store.tokens.create(app_key, "admin")
    cookie, _ = store.console.create_session(app_key, "token", token.info.token_id, 3600)
    assert store.console.session(cookie) is not None
    store.tokens.revoke(app_key, token.info.token_id)
    assert store.console.session(cookie) is None


def test_message_pages_walk_every_row_once_with_equal_times(store: Store, clock: FakeClock) -> None:
    app_key, devices = _app_with_devices(store, 3)
    sent = []
    for k in range(7):
        sent.append(_push(store, app_key, devices[:1], f"m{k}"))
        if k % 3 == 2:
            clock.advance(1)  # several messages share each creation time
    seen: list[str] = []
    cursor = None
    while True:
        page = store.console.messages_page(app_key, cursor=cursor, limit=2)
        seen += [m["msg_id"] for m in page["messages"]]
        cursor = page["next"]
        if cursor is None:
            break
    expected = sorted(sent, key=lambda m: (store.console.message_summary(app_key, m)["created_at"], m))
    assert seen == list(reversed(expected))
    first = store.console.messages_page(app_key, limit=1)["messages"][0]
    assert first["title"] == "m6" and first["counts"] == {"accepted": 1}


def test_filters_ranges_and_cursors(store: Store, clock: FakeClock) -> None:
    app_key, devices = _app_with_devices(store, 2)
    early = _push(store, app_key, devices, "early", task=True)
    clock.advance(100)
    late = _push(store, app_key, devices, "late")
    since = clock.now() - 50
    assert [m["msg_id"] for m in store.console.messages_page(app_key, since=since)["messages"]] == [late]
    assert [m["msg_id"] for m in store.console.messages_page(app_key, until=since)["messages"]] == [early]
    assert store.console.messages_page(app_key, state="draft")["messages"] == []
    tasks = store.console.tasks_page(app_key)["tasks"]
    assert [(t["task_id"], t["counts"]) for t in tasks] == [("t" + early, {"accepted": 2})]
    assert store.console.messages_page(app_key, since=since)["messages"][0]["task_id"] is None
    with pytest.raises(InvalidContent) as bad:
        store.console.messages_page(app_key, since=10, until=5)
    assert bad.value.code == "bad_range"
    with pytest.raises(InvalidContent) as cursor:
        store.console.tasks_page(app_key, cursor="nan~x")
    assert cursor.value.code == "bad_cursor"


def test_deliveries_page_with_history_and_state(store: Store) -> None:
    app_key, devices = _app_with_devices(store, 5)
    msg_id = _push(store, app_key, devices, "fan-out")
    store.messages.transition([(msg_id, d) for d in devices], DeliveryState.PUBLISHED)
    store.messages.transition([(msg_id, devices[0])], DeliveryState.ARRIVED)
    rows: list[str] = []
    cursor = None
    while True:
        page = store.console.deliveries_page(app_key, msg_id, cursor=cursor, limit=2)
        rows += [d["device_id"] for d in page["deliveries"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert rows == sorted(devices)
    arrived = store.console.deliveries_page(app_key, msg_id, state="arrived")["deliveries"]
    assert [(d["device_id"], [h["state"] for h in d["history"]]) for d in arrived] == [
        (devices[0], ["accepted", "published", "arrived"])
    ]
    summary = store.console.message_summary(app_key, msg_id)
    assert summary["counts"] == {"arrived": 1, "published": 4}
    assert summary["envelope"]["title"] == "fan-out" and summary["task"] is None
    other_app, _ = _app_with_devices(store, 0)
    with pytest.raises(NotFound):
        store.console.deliveries_page(other_app, msg_id)
    with pytest.raises(NotFound):
        store.console.message_summary(other_app, msg_id)


def test_device_lookup_by_id_install_id_and_alias(store: Store) -> None:
    app_key, devices = _app_with_devices(store, 4)
    assert store.console.find_devices(app_key, devices[1]) == [
        {"device_id": devices[1], "matched": "device_id"}
    ]
    assert store.console.find_devices(app_key, "i2") == [{"device_id": devices[2], "matched": "install_id"}]
    by_alias = store.console.find_devices(app_key, "user1")
    assert sorted(d["device_id"] for d in by_alias) == sorted([devices[1], devices[3]])
    assert {d["matched"] for d in by_alias} == {"alias (user)"}
    other_app, _ = _app_with_devices(store, 0)
    assert store.console.find_devices(other_app, devices[1]) == []
    first = _push(store, app_key, devices[:1], "one")
    second = _push(store, app_key, devices[:1], "two")
    recent = store.console.recent_deliveries(devices[0])
    assert [(r["msg_id"], r["title"]) for r in recent] == sorted(
        [(first, "one"), (second, "two")], reverse=True
    )
