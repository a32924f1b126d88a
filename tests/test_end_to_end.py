"""Issue 3 acceptance, end to end: CLI and mosquitto clients against a running server."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.conftest import Running, cli, cli_json


@pytest.fixture
def running(either_shape: Running) -> Running:
    """Each test against both shapes of ``serve``: all in one process, and the broker apart."""
    return either_shape


def _sub(r: Running, device: str, token: str, count: int = 1, wait: int = 10) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            "mosquitto_sub",
            "-p",
            str(r.mqtt_port),
            "-i",
            device,
            "-u",
            device,
            "-P",
            token,
            "-q",
            "1",
            "-t",
            f"mqttpush/{r.app_key}/d/{device}/m/+",
            "-C",
            str(count),
            "-W",
            str(wait),
            "-v",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _auth(r: Running) -> list[str]:
    return ["--url", r.url, "--app-key", r.app_key, "--app-secret", r.app_secret]


def _envelope(line: str) -> tuple[str, dict[str, Any]]:
    topic, _, payload = line.partition(" ")
    return topic, json.loads(payload)


def test_cli_flow_offline_then_online_device(running: Running) -> None:
    r = running
    created = cli_json("app", "create", "shop", "--data-dir", str(r.data_dir))
    assert set(created) == {"app_key", "app_secret"}
    r.app_key, r.app_secret = created["app_key"], created["app_secret"]

    reg = cli_json(
        "device",
        "register",
        "--url",
        r.url,
        "--app-key",
        r.app_key,
        "--install-id",
        "phone-1",
        "--platform",
        "android",
    )
    device, token = reg["device_id"], reg["device_token"]
    again = cli_json(
        "device",
        "register",
        "--url",
        r.url,
        "--app-key",
        r.app_key,
        "--install-id",
        "phone-1",
        "--platform",
        "android",
    )
    assert again["device_id"] == device

    # The device is offline: the message waits as a retained inbox message.
    sent = cli_json(
        "push", *_auth(r), "--device", device, "--title", "Sale", "--body", "50% off", "--data", '{"sku": 42}'
    )
    token = again["device_token"]
    sub = _sub(r, device, token)
    out, err = sub.communicate(timeout=20)
    assert sub.returncode == 0, err
    topic, env = _envelope(out.strip())
    assert topic == f"mqttpush/{r.app_key}/d/{device}/m/{sent['msg_id']}"
    assert env["id"] == sent["msg_id"]
    assert (env["title"], env["body"], env["data"]) == ("Sale", "50% off", {"sku": 42})

    status = cli_json("status", sent["msg_id"], *_auth(r))
    assert status["msg_id"] == sent["msg_id"]
    assert [(d["device_id"], d["state"]) for d in status["deliveries"]] == [(device, "published")]


def test_subscribed_device_gets_push_live(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-p",
            str(r.mqtt_port),
            "-i",
            device,
            "-u",
            device,
            "-P",
            token,
            "-q",
            "1",
            "-t",
            f"mqttpush/{r.app_key}/d/{device}/m/+",
            "-C",
            "2",
            "-W",
            "20",
            "-F",
            "%r %p",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert sub.stdout is not None
    # Once the first message is printed the subscription is in place; the second push is then live.
    first = r.push([device], title="first")
    retain, payload = sub.stdout.readline().split(" ", 1)
    assert json.loads(payload)["id"] == first
    live = r.push([device], title="live")
    retain, payload = sub.stdout.readline().split(" ", 1)
    assert json.loads(payload)["id"] == live
    assert retain == "0"  # MQTT-3.3.1-9: an established subscription gets RETAIN 0
    assert sub.wait(20) == 0


def test_receipt_with_mosquitto_pub_marks_arrived_and_clears_inbox(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    msg_id = r.push([device])
    r.wait_state(msg_id, device, "published")
    pub = subprocess.run(
        [
            "mosquitto_pub",
            "-p",
            str(r.mqtt_port),
            "-i",
            device,
            "-u",
            device,
            "-P",
            token,
            "-q",
            "1",
            "-t",
            f"mqttpush/{r.app_key}/d/{device}/r",
            "-m",
            json.dumps({"id": msg_id, "event": "arrived"}),
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert pub.returncode == 0, pub.stderr
    d = r.wait_state(msg_id, device, "arrived")
    assert [h["state"] for h in d["history"]] == ["accepted", "published", "arrived"]
    assert all(isinstance(h["at"], float) for h in d["history"])

    # A new subscriber finds nothing retained: -W ends mosquitto_sub with status 27 (timeout).
    sub = _sub(r, device, token, wait=1)
    out, _ = sub.communicate(timeout=20)
    assert out == ""
    assert sub.returncode == 27


def test_status_human_and_multiple_ids(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    a, b = r.push([device]), r.push([device])
    proc = cli("status", a, b, *_auth(r), "--json")
    assert proc.returncode == 0, proc.stderr
    assert [doc["msg_id"] for doc in json.loads(proc.stdout)] == [a, b]
    human = cli("status", a, *_auth(r))
    assert human.returncode == 0 and device in human.stdout


def test_device_listen_prints_and_acknowledges(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    msg_id = r.push([device], title="hello", body="world")
    proc = cli(
        "device",
        "listen",
        "--url",
        r.url,
        "--device-id",
        device,
        "--device-token",
        token,
        "--count",
        "1",
        "--timeout",
        "20",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["id"] == msg_id
    r.wait_state(msg_id, device, "arrived")


def test_cli_bad_input_exits_2_with_message(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    cases = [
        (["push", *_auth(r), "--device", "unknown1", "--title", "x"], "unknown_device"),
        (["push", *_auth(r), "--device", device, "--title", "x", "--data", "{bad"], "--data"),
        (["push", *_auth(r), "--device", device, "--title", "x", "--data", "[1]"], "--data"),
        (
            [
                "push",
                "--url",
                r.url,
                "--app-key",
                r.app_key,
                "--app-secret",
                "wrong",
                "--device",
                device,
                "--title",
                "x",
            ],
            "bad_signature",
        ),
        (
            [
                "push",
                "--url",
                r.url,
                "--app-key",
                "anope",
                "--app-secret",
                "s",
                "--device",
                device,
                "--title",
                "x",
            ],
            "unknown_app",
        ),
        (["push", *_auth(r), "--device", device, "--title", "x" * 5000], "envelope_too_large"),
        (["push", *_auth(r), "--title", "x"], "--device"),
        (["push", *_auth(r), "--device", device, "--title", "x", "--ttl", "0"], "--ttl"),
        (["status", "01nosuchmessage0000000000", *_auth(r)], "unknown_message"),
        (
            [
                "push",
                "--url",
                "http://127.0.0.1:9",
                "--app-key",
                "k",
                "--app-secret",
                "s",
                "--device",
                device,
                "--title",
                "x",
            ],
            "unreachable",
        ),
        (
            [
                "device",
                "register",
                "--url",
                r.url,
                "--app-key",
                r.app_key,
                "--install-id",
                "x",
                "--platform",
                "symbian",
            ],
            "--platform",
        ),
    ]
    for args, needle in cases:
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert needle in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    # and the server is still up
    assert r.push([device])
