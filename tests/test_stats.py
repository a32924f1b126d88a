"""Issue 16 statistics: every figure of ``GET /api/v1/stats`` equals what the status documents
(``GET /api/v1/messages/{id}``, with their history) of the messages say, counted independently
here; funnels equal the deliveries' states; bad input gets 422 with stable codes; the CLI's
``stats --json/--csv`` and ``report --format html|csv`` print what they say."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mqttpush.client import PushClient
from mqttpush.clock import ManualClock
from mqttpush.device import DeviceClient
from mqttpush.errors import ClientError
from mqttpush.store import Store
from tests.conftest import Running, cli, serving_apns

APNS_GOOD = "a" * 64
APNS_DEAD = "b" * 64
VENDORS = {"apns", "fcm", "hms", "mipush", "webpush"}
COUNTER = {"accepted": "targeted"}
DIMS = ("platform", "channel", "type", "app_version")


# --- the independent count: from status documents alone ----------------------------------------


def _join(carried: str, channel: str) -> str:
    if carried == "none":
        return channel
    return ",".join(sorted(set(carried.split(",")) | {channel}))


def expected_counts(
    docs: list[dict[str, Any]], devices: dict[str, tuple[str, str]], kinds: dict[str, str]
) -> dict[tuple[int, str, str, str, str], Counter[str]]:
    """``(minute, platform, channel, type, app_version) → counters`` from every history entry.

    The channel of an entry (docs/statistics.md): ``none`` for accepted, ``mqtt`` for published,
    the vendor for forwarded and for a vendor's failure, else what carried the delivery so far."""
    out: dict[tuple[int, str, str, str, str], Counter[str]] = {}
    for doc in docs:
        for d in doc["deliveries"]:
            platform, version = devices[d["device_id"]]
            carried = "none"
            for e in d["history"]:
                state, detail = e["state"], e.get("detail")
                if state == "queued":
                    continue
                if state == "accepted":
                    channel = "none"
                elif state == "published":
                    carried = _join(carried, "mqtt")
                    channel = "mqtt"
                elif state == "forwarded":
                    carried = _join(carried, detail)
                    channel = detail
                elif state == "failed" and detail and detail.split(": ")[0] in VENDORS:
                    channel = detail.split(": ")[0]
                else:
                    channel = carried
                key = (int(e["at"] // 60) * 60, platform, channel, kinds[doc["msg_id"]], version)
                out.setdefault(key, Counter())[COUNTER.get(state, state)] += 1
    return out


def reported_counts(doc: dict[str, Any]) -> dict[tuple[int, str, str, str, str], Counter[str]]:
    out: dict[tuple[int, str, str, str, str], Counter[str]] = {}
    for series in doc["series"]:
        k = series["key"]
        for p in series["points"]:
            counts = Counter({c: n for c, n in p.items() if c != "t" and n})
            if counts:
                out[(p["t"], k["platform"] or "", k["channel"], k["type"], k["app_version"] or "")] = counts
    return out


def expected_funnel(doc: dict[str, Any]) -> dict[str, Any]:
    deliveries = doc["deliveries"]
    states = Counter(d["state"] for d in deliveries)
    reached = [{e["state"] for e in d["history"]} for d in deliveries]
    arrived = states["arrived"] + states["opened"] + states["dismissed"]
    return {
        "targeted": len(deliveries),
        "published": sum("published" in r for r in reached),
        "forwarded": sum("forwarded" in r for r in reached),
        "arrived": arrived,
        "opened": states["opened"],
        "failed": states["failed"],
        "expired": states["expired"],
        "arrival_rate": round(arrived / len(deliveries), 4),
        "open_rate": round(states["opened"] / arrived, 4) if arrived else 0.0,
    }


def check_against_history(
    c: PushClient,
    msg_ids: list[str],
    devices: dict[str, tuple[str, str]],
    kinds: dict[str, str],
    since: float,
) -> dict[str, Any]:
    docs = [c.message(m) for m in msg_ids]
    until = max(e["at"] for doc in docs for d in doc["deliveries"] for e in d["history"]) + 60
    got = c.stats(since, until, ["platform", "channel", "type", "app_version"], "1m")
    expected = expected_counts(docs, devices, kinds)
    assert reported_counts(got) == expected
    assert got["totals"] == {
        c: sum(n[c] for n in expected.values())
        for c in (
            "targeted",
            "published",
            "forwarded",
            "arrived",
            "opened",
            "dismissed",
            "failed",
            "expired",
            "dropped",
            "cancelled",
        )
    }
    for doc in docs:
        funnel = c.funnel(doc["msg_id"])
        assert {k: funnel[k] for k in expected_funnel(doc)} == expected_funnel(doc)
    return {"docs": docs, "until": until, "stats": got}


def _settle(r: Running) -> None:
    r.call(r.server.dispatcher.drained())
    r.call(r.server.bridge.vendors.drained())


def _devices(r: Running, specs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out = []
    with PushClient(r.url, r.app_key) as c:
        for i, (platform, version) in enumerate(specs):
            reg = c.register_device(f"stats-{i}", platform, app_version=version or None)
            out.append((reg["device_id"], reg["device_token"]))
    return out


def _flush(r: Running) -> None:
    r.call(r.server.store.run(r.server.store.stats.flush))


# --- acceptance ---------------------------------------------------------------------------------


async def test_stats_equal_the_history_with_receipts_and_vendor_failures(
    running: Running, tmp_path: Path
) -> None:
    r = running
    since = time.time() - 120
    async with serving_apns(r, tmp_path) as fake:
        fake.unregistered.add(APNS_DEAD)
        await asyncio.to_thread(_vendor_scenario, r, since, tmp_path)


def _vendor_scenario(r: Running, since: float, tmp_path: Path) -> None:
    specs = [("android", "1.0"), ("android", "2.0"), ("web", ""), ("ios", "3.1"), ("ios", "3.1")]
    regs = _devices(r, specs)
    devices = {d: (p, v) for (d, _), (p, v) in zip(regs, specs, strict=True)}
    (a1, t1), (a2, t2), (w, _), (good, _), (dead, _) = regs
    kinds: dict[str, str] = {}
    with r.client() as c:
        c.set_vendor_token(good, "apns", APNS_GOOD)
        c.set_vendor_token(dead, "apns", APNS_DEAD)
        clients = [
            DeviceClient(host="127.0.0.1", port=r.mqtt_port, app_key=r.app_key, device_id=d, device_token=t)
            for d, t in ((a1, t1), (a2, t2))
        ]
        for dc in clients:
            dc.connect()
        try:
            # to MQTT devices (arrived, one opened) and one offline web device (waits, published)
            m1 = c.push({"target": {"devices": [a1, a2, w]}, "notification": {"title": "Sale"}})["msg_id"]
            kinds[m1] = "notification"
            r.wait_state(m1, a1, "arrived")
            r.wait_state(m1, a2, "arrived")
            clients[0].opened(m1)
            r.wait_state(m1, a1, "opened")
            # a data message, dismissed on one device
            m2 = c.push({"target": {"devices": [a2]}, "type": "message", "data": {"k": 1}})["msg_id"]
            kinds[m2] = "message"
            r.wait_state(m2, a2, "arrived")
            clients[1].dismissed(m2)
            r.wait_state(m2, a2, "dismissed")
            # through APNs only: one forwarded, one dead token (failed, by reason)
            m3 = c.push(
                {
                    "target": {"devices": [good, dead]},
                    "notification": {"title": "Vendor"},
                    "policy": {"strategy": "vendor"},
                }
            )["msg_id"]
            kinds[m3] = "notification"
            _settle(r)
            r.wait_state(m3, good, "forwarded")
            r.wait_state(m3, dead, "failed")
        finally:
            for dc in clients:
                dc.disconnect()

        checked = check_against_history(c, [m1, m2, m3], devices, kinds, since)
        docs, until = checked["docs"], checked["until"]
        totals = checked["stats"]["totals"]
        assert totals["forwarded"] == 1 and totals["failed"] == 1 and totals["opened"] == 1
        assert totals["dismissed"] == 1 and totals["targeted"] == 6

        # failures by reason: the vendor's word, without the vendor's name
        by_reason = c.stats(since, until, "reason,channel", "1m")
        failures = [
            (s["key"]["reason"], s["key"]["channel"], sum(p["failed"] for p in s["points"]))
            for s in by_reason["series"]
        ]
        (dead_history,) = [d for d in docs[2]["deliveries"] if d["device_id"] == dead]
        detail = dead_history["history"][-1]["detail"]
        assert detail.startswith("apns: ")
        assert failures == [(detail.removeprefix("apns: ").split(":")[0].split(";")[0].strip(), "apns", 1)]
        assert set(by_reason["totals"]) == {"failed", "dropped"}
        # forwards by vendor
        by_vendor = c.stats(since, until, "vendor", "1m")
        assert [(s["key"], sum(p["forwarded"] for p in s["points"])) for s in by_vendor["series"]] == [
            ({"vendor": "apns"}, 1)
        ]

        # the same figures once flushed to the minute, hour and day tables, read by another store
        api_totals = c.stats(since, until)["totals"]
        _flush(r)
        store = Store(r.data_dir)
        try:
            for step in ("1m", "1h", "1d"):
                assert store.stats.query(r.app_key, since, until, None, step)["totals"] == api_totals
            flushed = store.stats.query(r.app_key, since, until, list(DIMS), "1m")
            assert reported_counts(flushed) == reported_counts(checked["stats"])
        finally:
            store.close()
        assert c.stats(since, until)["totals"] == api_totals  # nothing counted twice by the flush

        _cli_checks(r, since, until, c.stats(since, until, ["platform"], "1m"), tmp_path)


def _auth(r: Running) -> list[str]:
    return ["--url", r.url, "--app-key", r.app_key, "--app-secret", r.app_secret]


def _cli_checks(r: Running, since: float, until: float, api_doc: dict[str, Any], tmp_path: Path) -> None:
    window = ["--since", str(since), "--until", str(until), "--by", "platform", "--step", "1m"]
    proc = cli("stats", *_auth(r), *window, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == api_doc

    proc = cli("stats", *_auth(r), *window, "--csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert rows and set(rows[0]) >= {"t", "time", "platform", "targeted", "arrived", "opened"}
    for counter in ("targeted", "published", "arrived", "opened", "failed"):
        assert sum(int(row[counter]) for row in rows) == api_doc["totals"][counter]
    assert len(rows) == sum(len(s["points"]) for s in api_doc["series"])

    proc = cli("stats", *_auth(r), *window)
    assert proc.returncode == 0, proc.stderr
    assert "total" in proc.stdout and "android" in proc.stdout and "targeted" in proc.stdout

    for flags, named in (
        (["--since", "yesterday-ish"], "--since"),
        (["--until", "nope"], "--until"),
        (["--since", "1h", "--until", "2h"], "--until"),
        (["--by", "colour"], "--by"),
        (["--step", "5m"], "--step"),
        (["--csv", "--json"], "--csv"),
    ):
        proc = cli("stats", *_auth(r), *flags)
        assert proc.returncode == 2, (flags, proc.stdout, proc.stderr)
        assert named in proc.stderr and "Traceback" not in proc.stderr

    # the monthly report reads the store directly
    month = datetime.fromtimestamp(until, UTC).strftime("%Y-%m")
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC).timestamp()
    with r.client() as c:
        month_totals = c.stats(start, until, None, "1d")["totals"]
    proc = cli("report", "--month", month, "--format", "csv", "--data-dir", str(r.data_dir))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    (total,) = [row for row in rows if row["app_key"] == r.app_key and row["section"] == "total"]
    assert {c: int(total[c]) for c in month_totals} == month_totals
    days = [row for row in rows if row["app_key"] == r.app_key and row["section"] == "day"]
    assert sum(int(row["arrived"]) for row in days) == month_totals["arrived"]
    assert {row["value"] for row in rows if row["section"] == "platform"} == {"android", "ios", "web"}
    assert float(total["arrival_rate"]) == round(month_totals["arrived"] / month_totals["targeted"], 4)

    out = tmp_path / "report.html"
    proc = cli(
        "report", "--month", month, "--format", "html", "--out", str(out), "--data-dir", str(r.data_dir)
    )
    assert proc.returncode == 0, proc.stderr
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "<polyline" in page
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert r.app_key in page and "arrival rate" in page

    for flags, named in (
        (["--month", "2026-13"], "--month"),
        (["--month", "soon"], "--month"),
        (["--format", "pdf"], "--format"),
        (["--data-dir", str(tmp_path / "nowhere")], "--data-dir"),
    ):
        args = ["report", *flags] + ([] if "--data-dir" in flags else ["--data-dir", str(r.data_dir)])
        proc = cli(*args)
        assert proc.returncode == 2, (flags, proc.stderr)
        assert named in proc.stderr and "Traceback" not in proc.stderr


def test_stats_equal_the_history_with_expiries(clocked: Running) -> None:
    r = clocked
    clock = r.server.clock
    assert isinstance(clock, ManualClock)
    since = clock.now() - 60
    specs = [("android", "1.0"), ("iot", "")]
    regs = _devices(r, specs)
    devices = {d: (p, v) for (d, _), (p, v) in zip(regs, specs, strict=True)}
    (online, token), (offline, _) = regs
    with r.client() as c:
        dc = DeviceClient(
            host="127.0.0.1",
            port=r.mqtt_port,
            app_key=r.app_key,
            device_id=online,
            device_token=token,
            now=clock.now,
        )
        dc.connect()
        try:
            m1 = c.push(
                {
                    "target": {"devices": [online, offline]},
                    "notification": {"title": "x"},
                    "policy": {"ttl": 60},
                }
            )["msg_id"]
            r.wait_state(m1, online, "arrived")
        finally:
            dc.disconnect()
        r.advance(30)
        m2 = c.push(
            {"target": {"devices": [offline]}, "type": "message", "data": {"a": 1}, "policy": {"ttl": 600}}
        )["msg_id"]
        r.advance(90)  # m1's TTL is over: its offline delivery expires; m2 still waits
        r.wait_state(m1, offline, "expired")
        r.advance(3600)  # and now m2's too, in another hour
        r.wait_state(m2, offline, "expired")
        kinds = {m1: "notification", m2: "message"}
        checked = check_against_history(c, [m1, m2], devices, kinds, since)
        assert checked["stats"]["totals"]["expired"] == 2

        # relative times are the server's clock: the last 2 h hold it all, in 1 h steps
        recent = c.stats("2h", None, "type")
        assert recent["step"] == "1m" and len(recent["series"]) == 2
        hourly = c.stats("2h", None, ["type"], "1h")
        assert hourly["totals"] == recent["totals"] == checked["stats"]["totals"]
        assert all(p["t"] % 3600 == 0 for s in hourly["series"] for p in s["points"])

        # the funnel of a task (a group send) is its message's
        c.update_tags(offline, add=["vip"])
        task_id = c.push({"target": {"tags": "vip"}, "notification": {"title": "t"}})["task_id"]
        deadline = time.monotonic() + 20
        while (status := c.task(task_id))["state"] != "done" and time.monotonic() < deadline:
            r.call(r.server.dispatcher.drained())
        funnel = c.funnel(task_id=task_id)
        assert funnel["task_id"] == task_id and funnel["msg_id"] == status["msg_id"]
        assert (funnel["targeted"], funnel["published"], funnel["arrival_rate"]) == (1, 1, 0.0)
        assert {k: funnel[k] for k in ("targeted", "arrived", "opened", "expired")} == {
            k: status[k] for k in ("targeted", "arrived", "opened", "expired")
        }


def test_bad_stats_requests_get_422_with_stable_codes(running: Running) -> None:
    with running.client() as c:
        for kwargs, code in (
            ({"since": "last tuesday"}, "bad_range"),
            ({"since": "2026-99-01"}, "bad_range"),
            ({"since": "1h", "until": "2h"}, "bad_range"),
            ({"since": "30d", "step": "1m"}, "bad_range"),
            ({"by": "platform,colour"}, "unknown_group_by"),
            ({"step": "5m"}, "bad_step"),
        ):
            with pytest.raises(ClientError) as err:
                c.stats(**kwargs)
            assert (err.value.status, err.value.code) == (422, code), kwargs
            assert err.value.message
        for call, code in (
            (lambda: c.funnel("m" * 21), "unknown_message"),
            (lambda: c.funnel(task_id="t" * 21), "unknown_task"),
        ):
            with pytest.raises(ClientError) as err:
                call()
            assert (err.value.status, err.value.code) == (404, code)
        # times in every accepted form
        now = time.time()
        iso = datetime.fromtimestamp(now - 3600, UTC).isoformat()
        for since in (str(int(now - 3600)), iso, iso.replace("+00:00", "Z"), "60m", "3600s"):
            doc = c.stats(since, None, None, "1m")
            assert abs(doc["since"] - (now - 3600)) < 60, since
            assert len(doc["series"]) == 1 and doc["series"][0]["key"] == {}
            assert 60 <= len(doc["series"][0]["points"]) <= 62
            assert all(set(p) >= {"t", "targeted", "arrived", "opened"} for p in doc["series"][0]["points"])


def test_no_stats_counts_nothing(tmp_path: Path) -> None:
    from tests.conftest import _serve

    serving = _serve(tmp_path / "data", None, stats=False)
    r = next(serving)
    try:
        ((device, _),) = r.register()
        msg_id = r.push([device])
        r.call(r.server.dispatcher.drained())
        with r.client() as c:
            assert c.message(msg_id)["deliveries"][0]["state"] == "published"
            assert c.stats("1h")["totals"]["targeted"] == 0
            assert c.funnel(msg_id)["targeted"] == 1  # funnels come from the deliveries
    finally:
        next(serving, None)
