"""Every program in examples/ runs as written (its own process, the command line its header gives)
against a real server, and what it sends arrives: pushes reach a device, receipts reach the
message's status. The browser example runs in headless chromium."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from queue import Empty, Queue
from typing import Any
from urllib.parse import urlencode

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By

from mqttpush.device import DeviceClient
from tests.conftest import Running, _serve, cli_json
from tests.console.test_console import until

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WAIT = 15.0


class Example:
    """One example as its own process; its stdout read line by line as it comes."""

    def __init__(self, *argv: str, stdin: bool = False, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=EXAMPLES.parent,
            env={**os.environ, **(env or {})},
        )
        self.lines: Queue[str | None] = Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def _fail(self, what: str) -> AssertionError:
        return AssertionError(
            f"{what}; {' '.join(self.argv)} exit={self.proc.poll()} stderr={''.join(self.stderr)}"
        )

    def expect(self, prefix: str, timeout: float = WAIT) -> str:
        """The next line that starts with ``prefix`` (earlier lines are skipped)."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except Empty:
                raise self._fail(f"no line starting {prefix!r} within {timeout}s") from None
            if line is None:
                raise self._fail(f"ended before a line starting {prefix!r}")
            if line.startswith(prefix):
                return line

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def finish(self, timeout: float = WAIT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self._fail(f"still running after {timeout}s") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)


@pytest.fixture
def examples() -> Iterator[list[Example]]:
    """Examples a test starts; any still running at its end is killed."""
    started: list[Example] = []
    yield started
    for ex in started:
        ex.stop()


def python(started: list[Example], script: str, *args: str, stdin: bool = False) -> Example:
    ex = Example(sys.executable, str(EXAMPLES / script), *args, stdin=stdin)
    started.append(ex)
    return ex


@contextlib.contextmanager
def listening(r: Running) -> Iterator[tuple[str, Queue[dict[str, Any]]]]:
    """A new device connected with mqttpush.device; yields its id and the messages it gets."""
    ((device_id, token),) = r.register()
    got: Queue[dict[str, Any]] = Queue()
    client = DeviceClient.from_server(r.url, device_id, token, on_message=got.put)
    client.connect()
    try:
        yield device_id, got
    finally:
        client.disconnect()


def received(got: Queue[dict[str, Any]], msg_id: str) -> dict[str, Any]:
    try:
        msg = got.get(timeout=WAIT)
    except Empty:
        raise AssertionError(f"{msg_id} never reached the device") from None
    assert msg["id"] == msg_id
    return msg


def take_over(r: Running, device_id: str, token: str) -> None:
    """Log in as the device, which closes the example's connection; return once the example has
    logged in again (that closes this one: nobody else holds the device's token)."""
    connected, closed = threading.Event(), threading.Event()
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv311, reconnect_on_failure=False
    )
    c.username_pw_set(device_id, token)
    c.on_connect = lambda *a: connected.set()
    c.on_disconnect = lambda *a: closed.set()
    c.connect("127.0.0.1", r.mqtt_port)
    c.loop_start()
    try:
        assert connected.wait(WAIT), "the second login got no CONNACK"
        assert closed.wait(WAIT), "the example did not log in again"
    finally:
        c.disconnect()
        c.loop_stop()


# --- device.py ----------------------------------------------------------------------------------


def test_device_registers_prints_a_push_and_opens_it_after_seconds(
    running: Running, examples: list[Example]
) -> None:
    r = running
    ex = python(
        examples,
        "device.py",
        *("--url", r.url, "--app-key", r.app_key, "--install-id", "laptop-1"),
        *("--open-after", "0.2", "--count", "1"),
    )
    registered = ex.expect("registered: ").split()
    device_id = registered[registered.index("--device-id") + 1]
    ex.expect(f"connected as {device_id}")

    msg_id = r.push([device_id], "Sale", "50% off", data={"sku": 42})
    assert ex.expect("push ") == f'push {msg_id}: Sale — 50% off  data={{"sku": 42}}'
    ex.expect(f"opened {msg_id}")
    assert ex.finish() == 0
    assert r.wait_state(msg_id, device_id, "opened")["channel"] == "mqtt"


def test_device_with_id_and_token_reconnects_and_opens_on_enter(
    running: Running, examples: list[Example]
) -> None:
    r = running
    ((device_id, token),) = r.register(platform="iot")
    ex = python(
        examples,
        "device.py",
        *("--url", r.url, "--device-id", device_id, "--device-token", token, "--count", "1"),
        stdin=True,
    )
    ex.expect(f"connected as {device_id}")
    take_over(r, device_id, token)

    msg_id = r.push([device_id], "After", "a reconnect")
    assert ex.expect("push ") == f"push {msg_id}: After — a reconnect"
    r.wait_state(msg_id, device_id, "arrived")
    ex.send("\n")
    ex.expect(f"opened {msg_id}")
    assert ex.finish() == 0
    r.wait_state(msg_id, device_id, "opened")


def test_device_refuses_half_credentials(examples: list[Example]) -> None:
    ex = python(examples, "device.py", "--device-id", "d1")
    assert ex.finish() == 2
    assert "--device-id and --device-token go together" in "".join(ex.stderr)


# --- browser/ -----------------------------------------------------------------------------------


@pytest.fixture
def ws_running(tmp_path: Path) -> Iterator[Running]:
    """A server with its MQTT-over-WebSocket listener on (``serve --ws-port``)."""
    yield from _serve(tmp_path / "data", ws_port=0)


def static_site(started: list[Example], directory: Path) -> str:
    """``python3 -m http.server`` over ``directory``, as the page's header says to serve it."""
    ex = Example(
        sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(directory)
    )
    started.append(ex)
    match = re.search(r" port (\d+) ", ex.expect("Serving HTTP on "))
    assert match
    return f"http://127.0.0.1:{match.group(1)}"


def test_browser_page_uses_the_mqtt_js_the_tests_pin() -> None:
    """The vendored bundle is the one tests/js installs (package-lock.json): update both at once."""
    pinned = EXAMPLES.parent / "tests" / "js" / "node_modules" / "mqtt"
    vendored = EXAMPLES / "browser" / "vendor"
    assert (vendored / "mqtt.min.js").read_bytes() == (pinned / "dist" / "mqtt.min.js").read_bytes()
    assert (vendored / "LICENSE.md").read_bytes() == (pinned / "LICENSE.md").read_bytes()
    version = json.loads((pinned / "package.json").read_text())["version"]
    assert f"MQTT.js {version} is in" in (EXAMPLES / "browser" / "index.html").read_text()


def test_browser_page_registers_shows_a_cli_push_and_its_click_is_opened(
    ws_running: Running, browser: Chrome, examples: list[Example]
) -> None:
    r = ws_running
    site = static_site(examples, EXAMPLES / "browser")
    ws = f"ws://127.0.0.1:{r.server.broker_node.listener_ports()['ws_port']}"
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(f"{site}/index.html?" + urlencode({"api": r.url, "key": r.app_key, "ws": ws}))
    until(browser, lambda d: d.find_element(By.ID, "state").get_attribute("data-state") == "connected")
    device_id = browser.find_element(By.ID, "device-id").text
    with r.client() as c:
        assert c.device(device_id)["platform"] == "web"  # it registered itself, cross-origin

    auth = ("--url", r.url, "--app-key", r.app_key, "--app-secret", r.app_secret)
    pushed = cli_json(
        "push",
        *auth,
        "--device",
        device_id,
        "--title",
        "Hi browser",
        "--body",
        "<b>as text</b>",
        "--data",
        '{"k": 1}',
    )
    msg_id = pushed["msg_id"]
    card = until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'li[data-msg-id="{msg_id}"]'))[0]
    assert card.find_element(By.CLASS_NAME, "title").text == "Hi browser"
    assert card.find_element(By.CLASS_NAME, "body").text == "<b>as text</b>"
    assert card.find_element(By.CLASS_NAME, "data").text == '{"k":1}'
    r.wait_state(msg_id, device_id, "arrived")

    card.click()
    r.wait_state(msg_id, device_id, "opened")
    status = cli_json("status", msg_id, *auth)
    assert [(d["device_id"], d["state"]) for d in status["deliveries"]] == [(device_id, "opened")]
    assert card.get_attribute("data-state") == "opened"
    # Nothing the page did was refused (its Content-Security-Policy included) or failed.
    assert [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


# --- publish_sync.py, publish_async.py ----------------------------------------------------------


def test_python_publisher_signs_and_follows_the_push_to_arrived(
    running: Running, examples: list[Example]
) -> None:
    r = running
    env = {"MQTTPUSH_URL": r.url, "MQTTPUSH_APP_KEY": r.app_key, "MQTTPUSH_APP_SECRET": r.app_secret}
    with listening(r) as (device_id, got):
        ex = Example(
            sys.executable,
            str(EXAMPLES / "publish_sync.py"),
            *("--device", device_id, "--title", "Sale", "--body", "50% off", "--data", '{"sku": 42}'),
            *("--wait", "arrived"),
            env=env,
        )
        examples.append(ex)
        msg_id = json.loads(ex.expect("{"))["msg_id"]
        msg = received(got, msg_id)
        assert (msg["title"], msg["body"], msg["data"]) == ("Sale", "50% off", {"sku": 42})
        status = json.loads(ex.expect("{"))
        assert [(d["device_id"], d["state"]) for d in status["deliveries"]] == [(device_id, "arrived")]
        assert ex.finish() == 0


def test_async_publisher_with_a_token_pushes_to_each_device_at_once(
    running: Running, examples: list[Example]
) -> None:
    r = running
    token = cli_json("app", "token", "create", r.app_key, "--data-dir", str(r.data_dir), "--scope", "push")[
        "token"
    ]
    with listening(r) as (first, got_first), listening(r) as (second, got_second):
        ex = Example(
            sys.executable,
            str(EXAMPLES / "publish_async.py"),
            *("--token", token, "--device", first, "--device", second),
            *("--title", "Order {n}", "--body", "for {device}", "--wait", "arrived"),
            env={"MQTTPUSH_URL": r.url},
        )
        examples.append(ex)
        lines = [json.loads(ex.expect('{"device_id"')) for _ in range(2)]
        pushed = {line["device_id"]: line["msg_id"] for line in lines}
        for n, (device_id, got) in enumerate(((first, got_first), (second, got_second)), 1):
            msg = received(got, pushed[device_id])
            assert (msg["title"], msg["body"]) == (f"Order {n}", f"for {device_id}")
        statuses = [json.loads(ex.expect('{"msg_id"')) for _ in range(2)]
        assert sorted(s["msg_id"] for s in statuses) == sorted(pushed.values())
        assert all(s["deliveries"][0]["state"] == "arrived" for s in statuses)
        assert ex.finish() == 0


# --- publish.mjs, push.sh -----------------------------------------------------------------------


def test_node_signs_by_hand_and_the_push_arrives(running: Running, examples: list[Example]) -> None:
    r = running
    env = {"MQTTPUSH_URL": r.url, "MQTTPUSH_APP_KEY": r.app_key, "MQTTPUSH_APP_SECRET": r.app_secret}
    with listening(r) as (device_id, got):
        ex = Example(
            "node",
            str(EXAMPLES / "publish.mjs"),
            *("--device", device_id, "--title", "Hi from Node", "--body", 'grüße + "quotes" & 100%'),
            *("--data", '{"n": [1, 2]}', "--status"),
            env=env,
        )
        examples.append(ex)
        msg_id = json.loads(ex.expect("{"))["msg_id"]
        status = json.loads(ex.expect("{"))
        assert status["msg_id"] == msg_id and status["deliveries"][0]["device_id"] == device_id
        assert ex.finish() == 0
        msg = received(got, msg_id)
        assert (msg["title"], msg["body"], msg["data"]) == (
            "Hi from Node",
            'grüße + "quotes" & 100%',
            {"n": [1, 2]},
        )

    wrong = Example(
        "node",
        str(EXAMPLES / "publish.mjs"),
        "--device",
        device_id,
        "--title",
        "x",
        env=env | {"MQTTPUSH_APP_SECRET": "not-the-secret"},
    )
    examples.append(wrong)
    assert wrong.finish() == 2
    assert "[bad_signature]" in "".join(wrong.stderr)


def test_curl_pushes_with_a_token_and_signed_with_openssl(running: Running, examples: list[Example]) -> None:
    r = running
    token = cli_json("app", "token", "create", r.app_key, "--data-dir", str(r.data_dir), "--scope", "push")[
        "token"
    ]
    script = str(EXAMPLES / "push.sh")
    env = {"MQTTPUSH_URL": r.url}
    with listening(r) as (device_id, got):
        quick = Example(
            "bash",
            script,
            "token",
            device_id,
            "Grüße",
            "50% off + free & fast",
            env=env | {"MQTTPUSH_TOKEN": token},
        )
        examples.append(quick)
        msg_id = json.loads(quick.expect("{"))["msg_id"]
        assert quick.finish() == 0
        msg = received(got, msg_id)
        assert (msg["title"], msg["body"]) == ("Grüße", "50% off + free & fast")

        text = 'line "one" \\ back\nline two'
        signed = Example(
            "bash",
            script,
            "signed",
            device_id,
            'A "quoted" title',
            text,
            env=env | {"MQTTPUSH_APP_KEY": r.app_key, "MQTTPUSH_APP_SECRET": r.app_secret},
        )
        examples.append(signed)
        msg_id = json.loads(signed.expect("{"))["msg_id"]
        assert signed.finish() == 0
        msg = received(got, msg_id)
        assert (msg["title"], msg["body"]) == ('A "quoted" title', text)

    refused = Example(
        "bash", script, "token", device_id, "t", env=env | {"MQTTPUSH_TOKEN": "mpt_" + "x" * 43}
    )
    examples.append(refused)
    assert json.loads(refused.expect("{"))["error"]["code"] == "bad_token"
    assert refused.finish() == 22


# --- iot_board.py -------------------------------------------------------------------------------


def test_iot_board_pushes_over_the_mqtt_publish_api(running: Running, examples: list[Example]) -> None:
    r = running
    board = (
        "iot_board.py",
        *("--mqtt", f"mqtt://127.0.0.1:{r.mqtt_port}", "--app-key", r.app_key, "--app-secret", r.app_secret),
        *("--alarm-above", "30", "--interval", "0"),
    )
    with listening(r) as (device_id, got):
        ex = python(examples, *board, "--device", device_id, "--readings", "25,31,32,24,33.5")
        answers = []
        for expected in (25, 31, 32, 24, 33.5):
            assert json.loads(ex.expect('{"reading"')) == {"reading": expected}
            if expected in (31, 33.5):  # each upward crossing of the limit, once
                answers.append(json.loads(ex.expect('{"request_id"')))
        assert ex.finish() == 0
        for answer, celsius in zip(answers, ("31.0", "33.5"), strict=True):
            msg = received(got, answer["msg_id"])
            assert (msg["title"], msg["body"]) == ("Greenhouse too hot", f"{celsius} °C, above 30 °C")
            assert msg["data"]["celsius"] == float(celsius)

    refused = python(examples, *board, "--device", "nosuchdevice", "--readings", "35")
    answer = json.loads(refused.expect('{"request_id"'))
    assert answer["error"]["code"] == "unknown_device"
    assert refused.finish() == 2
