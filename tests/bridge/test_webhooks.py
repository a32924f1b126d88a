"""Issue 17: signed webhooks to the app server, end to end: real devices send receipts over MQTT,
the store writes the events with them, the bridge's sender posts them to a real local HTTP
endpoint that verifies every signature, retrying with backoff (on the manual clock) while it is
down, across a kill -9 of the server, and never holding up another endpoint."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from mqttpush.client import PushClient
from mqttpush.clock import ManualClock
from mqttpush.device import DeviceClient
from mqttpush.store import Store
from tests.conftest import Running, ServeProcess, cli
from tests.mqtt_raw import RawClient
from tests.webhook_receiver import Receiver

DEVICES = 1000


def _until(r: Running, condition: Callable[[], bool], timeout: float = 30) -> None:
    """Wait until ``condition()`` holds, re-checked after each outcome of the webhook sender."""
    sender = r.server.bridge.webhooks

    async def wait() -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                await sender.changed()

    r.call(wait(), timeout + 5)


def _devices_send_arrived(r: Running, devices: list[dict[str, str]], push: Callable[[], str]) -> str:
    """Every device connects over MQTT and subscribes to its inbox; then ``push()``; each device
    takes its message and publishes an ``arrived`` receipt, as a phone would. Returns the msg id."""

    async def run() -> str:
        gate = asyncio.Semaphore(100)

        async def connect(d: dict[str, str]) -> RawClient:
            async with gate:
                client, code, _ = await RawClient.connect(
                    r.mqtt_port, d["device_id"], d["device_id"], d["device_token"]
                )
                assert code == 0
                assert await client.subscribe(f"mqttpush/{r.app_key}/d/{d['device_id']}/m/+") == [1]
                return client

        clients = await asyncio.gather(*(connect(d) for d in devices))
        msg_id = await asyncio.to_thread(push)

        async def receive(client: RawClient, device_id: str) -> None:
            got = await client.next_publish(30)
            assert got is not None and json.loads(got.payload)["id"] == msg_id
            receipt = json.dumps({"id": msg_id, "event": "arrived"}).encode()
            client.publish(f"mqttpush/{r.app_key}/d/{device_id}/r", receipt, qos=1)
            await client.writer.drain()

        await asyncio.gather(*(receive(c, d["device_id"]) for c, d in zip(clients, devices, strict=True)))
        r.call(asyncio.wait_for(r.server.receipts.wait_handled(len(devices)), 60), 65)
        await asyncio.gather(*(c.disconnect() for c in clients))
        return msg_id

    return asyncio.run(run())


def test_every_arrival_of_a_1000_device_push_reaches_an_endpoint_that_was_down_for_30_s(
    clocked: Running,
) -> None:
    r = clocked
    clock = r.server.clock
    assert isinstance(clock, ManualClock)
    sender = r.server.bridge.webhooks
    with Receiver(status=503) as receiver, r.client() as c:
        hook = c.add_webhook(receiver.url, ["delivery.arrived"])
        receiver.secret = hook["secret"]
        wid = hook["webhook_id"]
        store = Store(r.data_dir)
        devices = store.devices.import_devices(
            r.app_key, [{"install_id": f"i{i}", "platform": "iot"} for i in range(DEVICES)]
        )
        store.close()

        msg_id = _devices_send_arrived(r, devices, lambda: r.push([d["device_id"] for d in devices]))

        # Down: the first batch fails, then again after each backoff, for 30 s of the clock.
        _until(r, lambda: sender.failures.get(wid, 0) >= 1)
        (listed,) = c.list_webhooks()
        assert listed["state"] == "failing" and listed["backlog"] == DEVICES
        assert listed["last_error"].startswith("HTTP 503")
        down_since, waits = clock.now(), []
        while clock.now() - down_since < 30:
            failures = sender.failures[wid]
            waits.append(sender.retry_at[wid] - clock.now())
            assert len(waits) < 20, waits
            r.advance(waits[-1])
            _until(r, lambda: sender.failures.get(wid, 0) > failures)  # noqa: B023 (called here)
        assert len(waits) >= 3 and waits == sorted(waits), waits  # backing off, not hammering
        assert not receiver.accepted

        receiver.status = 200  # up again: the next retry goes through, then the rest at once
        r.advance(sender.retry_at[wid] - clock.now())
        receiver.wait_for(lambda rc: len(rc.events()) >= DEVICES, timeout=60)

    events = receiver.events()
    assert all(p.valid for p in receiver.posts)  # every POST carried a good signature
    assert sorted(e["delivery_id"] for e in events) == sorted(f"{msg_id}:{d['device_id']}" for d in devices)
    assert all(e["type"] == "delivery.arrived" and e["msg_id"] == msg_id for e in events)
    assert len({e["id"] for e in events}) == DEVICES
    assert all(len(batch) <= 500 for batch in receiver.accepted.values())
    failed_deliveries = {p.delivery for p in receiver.posts if p.status == 503}
    assert len(failed_deliveries) == 1 and failed_deliveries <= set(receiver.accepted)  # retried under one id
    with r.client() as c:
        (listed,) = c.list_webhooks()
    assert (listed["state"], listed["backlog"], listed["failing_since"]) == ("active", 0, None)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_dead_endpoint_is_listed_failing_and_delays_no_other(clocked: Running) -> None:
    r = clocked
    sender = r.server.bridge.webhooks
    auth = ["--app-key", r.app_key, "--app-secret", r.app_secret]
    dead_url = f"http://127.0.0.1:{_closed_port()}/hook"
    with Receiver() as live:
        add = cli(
            "webhook",
            "add",
            "--url",
            r.url,
            *auth,
            "--url",
            dead_url,
            "--event",
            "delivery.arrived",
            "--json",
        )
        assert add.returncode == 0, add.stderr
        dead = json.loads(add.stdout)
        env = {"MQTTPUSH_URL": r.url}
        add = cli(
            "webhook",
            "add",
            *auth,
            "--url",
            live.url,
            "--event",
            "delivery.arrived,task.done",
            "--json",
            env=env,
        )
        assert add.returncode == 0, add.stderr
        live.secret = json.loads(add.stdout)["secret"]

        devices = r.register(3)
        clients = [DeviceClient.from_server(r.url, d, t) for d, t in devices]
        for client in clients:
            client.connect()
        try:
            msg_id = r.push([d for d, _ in devices])
            live.wait_for(lambda rc: len(rc.events()) == 3)
            _until(r, lambda: sender.failures.get(dead["webhook_id"], 0) >= 1)
        finally:
            for client in clients:
                client.disconnect()
        for d, _ in devices:
            r.wait_state(msg_id, d, "arrived")

        listed = cli("webhook", "list", "--url", r.url, *auth, "--json")
        assert listed.returncode == 0, listed.stderr
        by_id = {w["webhook_id"]: w for w in json.loads(listed.stdout)["webhooks"]}
        failing = by_id[dead["webhook_id"]]
        assert (failing["state"], failing["backlog"], failing["url"]) == ("failing", 3, dead_url)
        assert "ConnectError" in failing["last_error"] and failing["last_error_at"] is not None
        healthy = by_id[next(w for w in by_id if w != dead["webhook_id"])]
        assert (healthy["state"], healthy["backlog"], healthy["last_error"]) == ("active", 0, None)
        assert healthy["events"] == ["delivery.arrived", "task.done"]

        human = cli("webhook", "list", "--url", r.url, *auth)
        assert "failing" in human.stdout and "backlog=3" in human.stdout and "ConnectError" in human.stdout

        removed = cli("webhook", "remove", dead["webhook_id"], "--url", r.url, *auth, "--json")
        assert json.loads(removed.stdout) == {"webhook_id": dead["webhook_id"], "removed": True}
        assert [w["webhook_id"] for w in PushClient(r.url, r.app_key, r.app_secret).list_webhooks()] == [
            healthy["webhook_id"]
        ]


def test_webhook_cli_names_the_bad_flag(running: Running) -> None:
    auth = ["--app-key", running.app_key, "--app-secret", running.app_secret]
    bad_event = cli(
        "webhook", "add", "--url", running.url, *auth, "--url", "http://127.0.0.1:9/x", "--event", "nope"
    )
    assert bad_event.returncode == 2 and "--event" in bad_event.stderr and "unknown_event" in bad_event.stderr
    bad_url = cli("webhook", "add", "--url", running.url, *auth, "--url", "ftp://x/", "--event", "alarm")
    assert bad_url.returncode == 2 and "--url" in bad_url.stderr and "bad_webhook_url" in bad_url.stderr
    no_hook = cli("webhook", "add", "--url", running.url, *auth, "--event", "alarm", env={"MQTTPUSH_URL": ""})
    assert no_hook.returncode == 2 and "--url" in no_hook.stderr and "Traceback" not in no_hook.stderr
    unknown = cli("webhook", "remove", "whnothing", "--url", running.url, *auth)
    assert unknown.returncode == 2 and "unknown_webhook" in unknown.stderr


def test_pending_events_are_sent_after_a_kill_9_and_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    app = Store(data_dir).apps.create_app("restart")
    with Receiver(status=503) as receiver:
        server = ServeProcess(data_dir)
        try:
            with PushClient(server.url, app.app_key, app.secret) as c:
                hook = c.add_webhook(receiver.url, ["delivery.arrived"])
                receiver.secret = hook["secret"]
                reg = c.register_device("phone", "android")
                with DeviceClient.from_server(server.url, reg["device_id"], reg["device_token"]):
                    push = {"target": {"devices": [reg["device_id"]]}, "notification": {"title": "hi"}}
                    msg_id = c.push(push)["msg_id"]
                    receiver.wait_for(lambda rc: any(p.status == 503 for p in rc.posts))
                first_try = receiver.posts[0].delivery
        finally:
            assert server.stop(signal.SIGKILL) == -signal.SIGKILL

        receiver.status = 200
        server = ServeProcess(data_dir)
        try:
            receiver.wait_for(lambda rc: len(rc.events()) == 1)
            deadline = time.monotonic() + 10
            with PushClient(server.url, app.app_key, app.secret) as c:
                while (listed := c.list_webhooks())[0]["backlog"]:  # its 2xx is being recorded
                    assert time.monotonic() < deadline, listed
        finally:
            server.stop(signal.SIGTERM)
    (event,) = receiver.events()
    assert event["delivery_id"] == f"{msg_id}:{reg['device_id']}"
    assert list(receiver.accepted) == [first_try]  # the same delivery id as before the crash
    assert listed[0]["state"] == "active"
