"""Issue 4 acceptance: 1,000 devices with a seeded mix; each kind of target reaches exactly the
set the test computes on its own, independently of the server's code."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mqttpush.errors import ClientError
from mqttpush.store import Store
from tests.conftest import Running
from tests.mqtt_raw import RawClient

TAGS = ["cs", "grad", "staff", "math", "vip"]
PLATFORMS = ["android", "ios", "web", "iot"]
VERSIONS = ["1.9.9", "2.0", "2.0.0-beta", "2.1.0", "2.10.1", None]
CHANNELS = ["play", "huawei", "appstore", None]
LOCALES = ["de-DE", "de-AT", "en-GB", "en", "fr-FR", None]


@dataclass
class Dev:
    device_id: str
    platform: str
    app_version: str | None
    channel: str | None
    locale: str | None
    tags: set[str]
    test: bool
    alias: str | None
    last_seen: float | None


@dataclass
class Fleet:
    r: Running
    devices: list[Dev]

    def ids(self, pred: Any) -> set[str]:
        return {d.device_id for d in self.devices if pred(d)}


def _vkey(v: str) -> tuple[Any, ...]:
    # independent of bridge.targets.version_key: numeric parts, pre-release sorts first
    main, _, pre = v.partition("-")
    nums = [int(x) for x in main.split(".")]
    while nums and nums[-1] == 0:
        nums.pop()
    return (nums, 0 if pre else 1)


@pytest.fixture
def fleet(running: Running) -> Fleet:
    rng = random.Random(20261125)
    rows = []
    for i in range(1000):
        tags = {t for t in TAGS if rng.random() < 0.3}
        rows.append(
            {
                "install_id": f"inst-{i}",
                "platform": rng.choice(PLATFORMS),
                "app_version": rng.choice(VERSIONS),
                "channel": rng.choice(CHANNELS),
                "locale": rng.choice(LOCALES),
                "tags": sorted(tags),
                "test": rng.random() < 0.05,
                # user-k owns one or two devices
                "alias": f"user-{i // 2 if i % 10 < 4 else i}" if i % 3 == 0 else None,
                "alias_type": "user",
            }
        )
    store = Store(running.data_dir)
    imported = store.devices.import_devices(running.app_key, rows)
    now = time.time()
    devices = []
    seen_at: list[tuple[float | None, str]] = []
    for row, dev in zip(rows, imported, strict=True):
        last_seen = None if rng.random() < 0.2 else now - rng.uniform(0, 20 * 86400)
        seen_at.append((last_seen, dev["device_id"]))
        devices.append(
            Dev(
                dev["device_id"],
                row["platform"],
                row["app_version"],
                row["channel"],
                row["locale"],
                set(row["tags"]),
                row["test"],
                row["alias"],
                last_seen,
            )
        )
    store.close()
    with sqlite3.connect(running.data_dir / "mqttpush.db") as conn:  # test setup only: history of presence
        conn.executemany("UPDATE devices SET last_seen = ? WHERE device_id = ?", seen_at)
    return Fleet(running, devices)


def _reached(r: Running, result: dict[str, Any]) -> set[str]:
    if "task_id" in result:
        r.call(r.server.tasks.idle())
        with r.client() as c:
            task = c.task(result["task_id"])
        assert task["state"] == "done", task
        assert task["published"] == task["targeted"]
    else:
        r.call(r.server.dispatcher.drained())
    with r.client() as c:
        deliveries = c.message(result["msg_id"])["deliveries"]
    assert all(d["state"] == "published" for d in deliveries)
    return {d["device_id"] for d in deliveries}


def _push(r: Running, target: dict[str, Any], **extra: Any) -> dict[str, Any]:
    with r.client() as c:
        return c.push({"target": target, "notification": {"title": "t"}} | extra)


def test_tag_expressions_string_and_json(fleet: Fleet) -> None:
    r = fleet.r
    expected = fleet.ids(lambda d: ("cs" in d.tags and "grad" not in d.tags) or "staff" in d.tags)
    assert 100 < len(expected) < 900
    as_string = _push(r, {"tags": "cs && !grad || staff"})
    assert set(as_string) == {"task_id", "msg_id"}
    assert _reached(r, as_string) == expected
    as_json = _push(
        r, {"tags": {"or": [{"and": [{"tag": "cs"}, {"not": {"tag": "grad"}}]}, {"tag": "staff"}]}}
    )
    assert _reached(r, as_json) == expected
    words = _push(r, {"tags": "(vip or math) and not staff"})
    assert _reached(r, words) == fleet.ids(lambda d: bool({"vip", "math"} & d.tags) and "staff" not in d.tags)


def test_filters_and_filters_with_tags(fleet: Fleet) -> None:
    r = fleet.r
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"filter": {"platform": "ios"}}, lambda d: d.platform == "ios"),
        (
            {"filter": {"platform": ["android", "web"], "channel": "play"}},
            lambda d: d.platform in ("android", "web") and d.channel == "play",
        ),
        (
            {"filter": {"app_version": ">=2.1"}},
            lambda d: d.app_version and _vkey(d.app_version) >= _vkey("2.1"),
        ),
        (
            {"filter": {"app_version": [">2.0.0-beta", "<2.10"]}},
            lambda d: d.app_version and _vkey("2.0.0-beta") < _vkey(d.app_version) < _vkey("2.10"),
        ),
        (
            {"filter": {"app_version": "2.0.0"}},
            lambda d: d.app_version and _vkey(d.app_version) == _vkey("2.0"),
        ),
        ({"filter": {"locale": "de"}}, lambda d: (d.locale or "").startswith("de")),
        ({"filter": {"locale": ["en-GB", "fr"]}}, lambda d: d.locale in ("en-GB", "fr-FR")),
        ({"filter": {"test": True}}, lambda d: d.test),
        (
            {"filter": {"last_seen_within": "7d"}},
            lambda d: d.last_seen is not None and time.time() - d.last_seen <= 7 * 86400,
        ),
        (
            {"filter": {"platform": "android"}, "tags": "vip || math"},
            lambda d: d.platform == "android" and bool({"vip", "math"} & d.tags),
        ),
    ]
    for target, pred in cases:
        expected = fleet.ids(pred)
        assert expected, target
        assert _reached(r, _push(r, target)) == expected, target


def test_device_and_alias_lists(fleet: Fleet) -> None:
    r = fleet.r
    some = [d.device_id for d in fleet.devices[:1000:7]]
    assert _reached(r, _push(r, {"devices": some})) == set(some)
    aliases = sorted({d.alias for d in fleet.devices if d.alias})[:300]
    expected = fleet.ids(lambda d: d.alias in aliases)
    assert len(expected) > len(aliases)  # some users have two devices
    result = _push(r, {"alias": aliases, "alias_type": "user"})
    assert set(result) == {"msg_id"}
    assert _reached(r, result) == expected
    with pytest.raises(ClientError) as info:
        _push(r, {"alias": "nobody", "alias_type": "user"})
    assert (info.value.status, info.value.code) == (404, "unknown_alias")
    with pytest.raises(ClientError) as info:
        _push(r, {"devices": [f"d{i:020d}" for i in range(1001)]})
    assert (info.value.status, info.value.code) == (422, "too_many_targets")


def test_files_of_ids_and_of_aliases(fleet: Fleet, tmp_path: Path) -> None:
    r = fleet.r
    chosen = [d.device_id for d in fleet.devices[::3]]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join([*chosen, "dunknown00000000000000", "", chosen[0]]) + "\n")
    with r.client() as c:
        uploaded = c.upload_file(ids_file)
        assert uploaded["lines"] == len(chosen) + 2
        result = c.push({"target": {"file_id": uploaded["file_id"]}, "notification": {"title": "f"}})
    assert _reached(r, result) == set(chosen)

    aliases = sorted({d.alias for d in fleet.devices if d.alias})[::2]
    alias_file = tmp_path / "aliases.txt"
    alias_file.write_text("\n".join(aliases))
    with r.client() as c:
        uploaded = c.upload_file(alias_file, "aliases", "user")
        result = c.push({"target": {"file_id": uploaded["file_id"]}, "notification": {"title": "f"}})
    assert _reached(r, result) == fleet.ids(lambda d: d.alias in aliases)


def test_broadcast_is_one_publish_on_the_broadcast_topic(fleet: Fleet) -> None:
    r = fleet.r
    result = _push(r, {"broadcast": True})
    assert _reached(r, result) == fleet.ids(lambda d: True)
    retained = [t for t in r.server.broker.retained_topics() if result["msg_id"] in t]
    assert retained == [f"mqttpush/{r.app_key}/b/{result['msg_id']}"]


def test_test_mode_reaches_only_test_devices(fleet: Fleet) -> None:
    r = fleet.r
    tests = fleet.ids(lambda d: d.test)
    policy = {"policy": {"production": False}}
    assert _reached(r, _push(r, {"broadcast": True}, **policy)) == tests
    assert _reached(r, _push(r, {"tags": "cs"}, **policy)) == fleet.ids(lambda d: d.test and "cs" in d.tags)
    some = [d.device_id for d in fleet.devices[:200]]
    assert _reached(r, _push(r, {"devices": some}, **policy)) == tests & set(some)
    non_test = [d.device_id for d in fleet.devices if not d.test][:5]
    with pytest.raises(ClientError) as info:
        _push(r, {"devices": non_test}, **policy)
    assert info.value.code == "no_test_devices"


def test_cancel_before_the_first_batch_sends_nothing(fleet: Fleet) -> None:
    r = fleet.r
    app = Store(r.data_dir).apps.get_app(r.app_key)
    assert app is not None
    from mqttpush.models import PushRequest

    async def push_then_cancel() -> dict[str, Any]:
        # The store thread is FIFO: the cancel commits before the runner reads the task.
        res = await r.server.intake.push(
            app,
            PushRequest.model_validate({"target": {"broadcast": True}, "notification": {"title": "oops"}}),
        )
        await r.server.store.run(r.server.store.tasks.cancel_task, r.app_key, res["task_id"])
        r.server.tasks.cancelled(res["task_id"])
        return res

    result = r.call(push_then_cancel())
    r.call(r.server.tasks.idle())
    with r.client() as c:
        task = c.task(result["task_id"])
        assert (task["state"], task["targeted"], task["published"]) == ("cancelled", 0, 0)
        with pytest.raises(ClientError) as info:
            c.cancel_task(result["task_id"])
        assert (info.value.status, info.value.code) == (409, "task_finished")
    assert not [t for t in r.server.broker.retained_topics() if result["msg_id"] in t]


async def test_templates_and_batch_render_per_target(fleet: Fleet) -> None:
    r = fleet.r
    user, password = Store(r.data_dir).accounts.service_credentials()
    watcher, _, _ = await RawClient.connect(r.mqtt_port, "watcher", user, password)
    await watcher.subscribe(f"mqttpush/{r.app_key}/d/+/m/+")
    targets = fleet.devices[:3]
    aliased = next(d for d in fleet.devices if d.alias)

    def setup_and_send() -> list[str]:
        with r.client() as c:
            c.put_template(
                "hello",
                {"notification": {"title": "Hi {{name}}", "body": "{{n}} new"}, "data": {"who": "{{name}}"}},
            )
            items: list[dict[str, Any]] = [
                {"device": d.device_id, "vars": {"name": f"N{i}", "n": i}} for i, d in enumerate(targets)
            ]
            items.append({"alias": aliased.alias, "vars": {"name": "Al", "n": 9}})
            msg_ids = c.push_batch({"template": "hello", "items": items})
            single = c.push(
                {
                    "target": {"devices": [targets[0].device_id]},
                    "template": "hello",
                    "vars": {"name": "Solo", "n": 1},
                }
            )["msg_id"]
            with pytest.raises(ClientError) as info:
                c.push(
                    {
                        "target": {"devices": [targets[0].device_id]},
                        "template": "hello",
                        "vars": {"name": "x"},
                    }
                )
            assert info.value.code == "missing_variable"
            return [*msg_ids, single]

    msg_ids = await asyncio.to_thread(setup_and_send)
    expected_count = len(targets) + len(fleet.ids(lambda d: d.alias == aliased.alias)) + 1
    got = {}
    while len(got) < expected_count:
        p = await watcher.next_publish(10)
        assert p is not None, got
        env = json.loads(p.payload)
        got[(env["id"], p.topic.split("/")[3])] = (env["title"], env["body"], env["data"])
    await watcher.disconnect()
    for i, d in enumerate(targets):
        assert got[(msg_ids[i], d.device_id)] == (f"Hi N{i}", f"{i} new", {"who": f"N{i}"})
    assert got[(msg_ids[3], aliased.device_id)][0] == "Hi Al"
    assert got[(msg_ids[4], targets[0].device_id)][0] == "Hi Solo"


def test_tags_and_aliases_through_the_api(running: Running) -> None:
    r = running
    (phone, phone_token), (tablet, _) = r.register(2)
    with r.client() as c:
        assert c.update_tags(phone, add=["cs", "vip"]) == ["cs", "vip"]
        assert c.update_tags(phone, add=["grad"], remove=["vip"]) == ["cs", "grad"]
        with pytest.raises(ClientError) as info:
            c.update_tags(phone, add=[f"t{i}" for i in range(101)])
        assert info.value.code in ("too_many_tags", "invalid_request")
        c.bind_alias(phone, "alice")
        c.bind_alias(tablet, "alice", mode="add")
        assert _reached(r, c.push({"target": {"alias": "alice"}, "notification": {"title": "x"}})) == {
            phone,
            tablet,
        }
        c.bind_alias(tablet, "alice")  # set: alice now means the tablet only
        assert _reached(r, c.push({"target": {"alias": "alice"}, "notification": {"title": "x"}})) == {tablet}
        assert c.unbind_alias(tablet, "alice") == []
        doc = c.device(phone)
        assert doc["tags"] == ["cs", "grad"] and doc["aliases"] == []
    # the device itself, with its token, may tag itself but not others
    import httpx

    me = httpx.post(
        f"{r.url}/api/v1/devices/{phone}/tags",
        json={"add": ["self"]},
        headers={"Authorization": f"Bearer {phone_token}"},
    )
    assert me.status_code == 200 and "self" in me.json()["tags"]
    other = httpx.post(
        f"{r.url}/api/v1/devices/{tablet}/tags",
        json={"add": ["x"]},
        headers={"Authorization": f"Bearer {phone_token}"},
    )
    assert other.status_code == 403 and other.json()["error"]["code"] == "not_your_device"
