"""Device authentication and ACL on a real mosquitto 2.0, from the files ``bridge.mosquitto`` writes.

Each test starts its own ``mosquitto -c CONF`` on an ephemeral loopback port and talks to it as
devices, app publishers and the bridge would: paho clients, ``mosquitto_sub``/``mosquitto_passwd``,
and a raw socket where the CONNACK byte itself is the point.

"Nothing arrives" is never watched for a while: mosquitto handles one client's packets in order
and delivers to one subscriber in order, so a permitted *barrier* message sent after the forbidden
ones proves that the forbidden ones, had they passed, would already have arrived.
"""

from __future__ import annotations

import base64
import os
import pwd
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bridge.mosquitto import (
    MOSQUITTO_ITERATIONS,
    AppEntry,
    DeviceEntry,
    acl_file,
    mosquitto_conf,
    password_file,
    password_hash,
    reload,
    write_atomically,
)
from mqttpush import ids, topics
from mqttpush.errors import InvalidContent

MOSQUITTO = "/usr/sbin/mosquitto"
TIMEOUT = 5.0
GRANTED_QOS1 = 1
CONNACK_ACCEPTED, CONNACK_NOT_AUTHORISED = 0, 5


@dataclass(frozen=True)
class Device:
    app: str
    id: str
    token: str

    def entry(self) -> DeviceEntry:
        return DeviceEntry(self.app, self.id, password_hash(self.token))

    def inbox(self, msg_id: str) -> str:
        return topics.inbox_topic(self.app, self.id, msg_id)


@dataclass(frozen=True)
class App:
    key: str
    secret: str

    def entry(self) -> AppEntry:
        return AppEntry(self.key, password_hash(self.secret))


APP = App("a7apponeaaaaaaaa", ids.new_secret())
OTHER_APP = App("a7apptwobbbbbbbb", ids.new_secret())
ALICE = Device(APP.key, "daliceaaaaaaaaaaaaaaa", ids.new_secret())
BOB = Device(APP.key, "dbobbbbbbbbbbbbbbbbbb", ids.new_secret())
CAROL = Device(OTHER_APP.key, "dcarolcccccccccccccc", ids.new_secret())
SERVICE_USER, SERVICE_PASSWORD = "mqttpush-service", ids.new_secret()


# --- the broker ---------------------------------------------------------------------------------


def _poll(ready: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Readiness poll: check every 50 ms until ``ready()`` or the deadline."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    """A running mosquitto whose password and ACL files come from ``bridge.mosquitto``."""

    dir: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def pid_file(self) -> Path:
        return self.dir / "mosquitto.pid"

    @property
    def log(self) -> str:
        return (self.dir / "mosquitto.log").read_text()

    def connack(self, username: str | None, password: str | None, **kw: Any) -> int:
        sock, code = raw_connect(self.port, username, password, **kw)
        sock.close()
        return code

    def client(self, username: str, password: str, **kw: Any) -> Client:
        return Client(self.port, username, password, **kw)

    def service(self) -> Client:
        # One service connection per test: the broker makes the username the client id, so a
        # second one would take the first one's session over.
        return self.client(SERVICE_USER, SERVICE_PASSWORD)


def write_files(directory: Path, devices: list[Device], apps: list[App]) -> None:
    entries = [d.entry() for d in devices]
    app_entries = [a.entry() for a in apps]
    service = (SERVICE_USER, password_hash(SERVICE_PASSWORD))
    write_atomically(directory / "passwd", password_file(entries, app_entries, service))
    write_atomically(directory / "acl", acl_file(entries, app_entries, SERVICE_USER))


def _start(directory: Path) -> Broker:
    port = _free_port()
    conf = mosquitto_conf(
        host="127.0.0.1",
        port=port,
        password_file=str(directory / "passwd"),
        acl_file=str(directory / "acl"),
        pid_file=str(directory / "mosquitto.pid"),
        # As root (CI) mosquitto would switch to user "mosquitto", who cannot read tmp_path.
        user=pwd.getpwuid(os.getuid()).pw_name,
    )
    (directory / "mosquitto.conf").write_text(conf)
    with (directory / "mosquitto.log").open("wb") as log:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(directory / "mosquitto.conf")], stderr=log)
    broker = Broker(directory, port, proc)

    def accepting() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"mosquitto exited {proc.returncode}: {broker.log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    try:
        _poll(accepting, f"mosquitto to listen on {port}")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """mosquitto with ALICE, BOB (APP), CAROL (OTHER_APP), both apps and the service."""
    write_files(tmp_path, [ALICE, BOB, CAROL], [APP, OTHER_APP])
    b = _start(tmp_path)
    try:
        yield b
    finally:
        b.proc.terminate()
        try:
            b.proc.wait(10)
        except subprocess.TimeoutExpired:
            b.proc.kill()
            b.proc.wait()


# --- clients ------------------------------------------------------------------------------------


def _mqtt_str(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!H", len(data)) + data


def raw_connect(
    port: int,
    username: str | None,
    password: str | None,
    *,
    client_id: str = "",
    will: tuple[str, str] | None = None,
) -> tuple[socket.socket, int]:
    """Send an MQTT 3.1.1 CONNECT by hand; returns the open socket and the CONNACK return code."""
    flags = 0x02  # clean session
    payload = _mqtt_str(client_id)
    if will is not None:
        flags |= 0x04 | 0x08 | 0x20  # Will, QoS 1, retained: how devices announce `offline`
        payload += _mqtt_str(will[0]) + _mqtt_str(will[1])
    if username is not None:
        flags |= 0x80
        payload += _mqtt_str(username)
    if password is not None:
        flags |= 0x40
        payload += _mqtt_str(password)
    body = _mqtt_str("MQTT") + bytes([4, flags]) + struct.pack("!H", 30) + payload
    assert len(body) < 128 * 128  # so the remaining length fits in two bytes
    length = bytes([len(body)]) if len(body) < 128 else bytes([len(body) % 128 | 0x80, len(body) // 128])
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(b"\x10" + length + body)
    connack = b""
    while len(connack) < 4:
        chunk = sock.recv(4 - len(connack))
        if not chunk:
            raise ConnectionError(f"closed without CONNACK (got {connack!r})")
        connack += chunk
    assert connack[:2] == b"\x20\x02", connack
    return sock, connack[3]


class Client:
    """A paho MQTT 3.1.1 client driven from the test thread; it never reconnects on its own."""

    def __init__(
        self, port: int, username: str, password: str, *, client_id: str = "", clean: bool = True
    ) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.disconnected = threading.Event()
        self._connack: Future[int] = Future()
        self._subacks: dict[int, list[int]] = {}
        self._suback_arrived = threading.Condition()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        c.username_pw_set(username, password)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = lambda _c, _u, msg: self.messages.put(msg)
        c.on_disconnect = lambda *_: self.disconnected.set()
        self._c = c
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()
        code = self._connack.result(TIMEOUT)
        if code != CONNACK_ACCEPTED:
            self.close()
            raise AssertionError(f"{username} refused: CONNACK reason {code}")

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connack.set_result(reason.value)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, reasons: list[Any], _p: Any) -> None:
        with self._suback_arrived:
            self._subacks[mid] = [r.value for r in reasons]
            self._suback_arrived.notify_all()

    def subscribe(self, *filters: str) -> list[int]:
        """SUBSCRIBE at QoS 1; returns the SUBACK return codes (1 granted, 0x80 refused)."""
        rc, mid = self._c.subscribe([(f, 1) for f in filters])
        assert rc == mqtt.MQTT_ERR_SUCCESS and mid is not None
        with self._suback_arrived:
            assert self._suback_arrived.wait_for(lambda: mid in self._subacks, TIMEOUT), "no SUBACK"
            return self._subacks.pop(mid)

    def publish(self, topic: str, payload: str, *, retain: bool = False) -> None:
        """PUBLISH at QoS 1 and wait for the PUBACK (mosquitto acks even what its ACL drops)."""
        info = self._c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), f"no PUBACK for {topic}"

    def until(self, topic: str, payload: str) -> list[mqtt.MQTTMessage]:
        """Every message received up to and including the barrier ``(topic, payload)``."""
        got: list[mqtt.MQTTMessage] = []
        while True:
            try:
                msg = self.messages.get(timeout=TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"barrier {topic} never arrived; got {_seen(got)}") from None
            got.append(msg)
            if msg.topic == topic and msg.payload == payload.encode():
                return got

    def close(self) -> None:
        self._c.disconnect()
        self._c.loop_stop()


def _seen(messages: list[mqtt.MQTTMessage]) -> list[tuple[str, bytes]]:
    return [(m.topic, bytes(m.payload)) for m in messages]


def _topics(messages: list[mqtt.MQTTMessage]) -> set[str]:
    return {m.topic for m in messages}


# --- pure rendering -----------------------------------------------------------------------------


def test_password_hash_is_byte_identical_to_mosquitto_passwd(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "user", "pässwörd"], check=True)
    theirs = path.read_text().strip().split(":", 1)[1]
    prefix, kind, iterations, salt, _ = theirs.split("$")
    assert (prefix, kind, int(iterations)) == ("", "7", MOSQUITTO_ITERATIONS)
    assert password_hash("pässwörd", salt=base64.b64decode(salt)) == theirs

    ours = password_hash("pässwörd").split("$")
    assert [len(f) for f in ours] == [len(f) for f in theirs.split("$")] == [0, 1, 3, 16, 88]
    assert len(base64.b64decode(ours[3])) == 12 and len(base64.b64decode(ours[4])) == 64
    assert password_hash("x") != password_hash("x")  # a fresh salt every time


def test_acl_file_has_one_explicit_user_block_per_identity_and_no_patterns() -> None:
    text = acl_file([ALICE.entry()], [APP.entry()], SERVICE_USER)
    assert "pattern" not in text
    blocks = [b.strip().splitlines() for b in text.split("\n\n")[1:]]
    assert blocks == [
        [f"user {SERVICE_USER}", "topic readwrite mqttpush/#"],
        [
            f"user {APP.key}",
            f"topic write mqttpush/{APP.key}/api/push",
            f"topic read mqttpush/{APP.key}/api/result/+",
        ],
        [
            f"user {ALICE.id}",
            f"topic read mqttpush/{APP.key}/d/{ALICE.id}/m/+",
            f"topic read mqttpush/{APP.key}/b/+",
            f"topic write mqttpush/{APP.key}/d/{ALICE.id}/r",
            f"topic write mqttpush/{APP.key}/d/{ALICE.id}/s",
        ],
    ]


@pytest.mark.parametrize(
    "devices, apps, service",
    [
        ([DeviceEntry(APP.key, "dev/1", "$7$1$a$b")], [], SERVICE_USER),  # a topic level in disguise
        ([DeviceEntry(APP.key, "d#", "$7$1$a$b")], [], SERVICE_USER),
        ([DeviceEntry("a+", "dev1", "$7$1$a$b")], [], SERVICE_USER),
        ([DeviceEntry(APP.key, "dev1\nuser x", "$7$1$a$b")], [], SERVICE_USER),  # line injection
        ([DeviceEntry(APP.key, SERVICE_USER, "$7$1$a$b")], [], SERVICE_USER),  # a device posing as service
        ([], [AppEntry("dev1", "$7$1$a$b")], "dev1:x"),
        ([DeviceEntry(APP.key, APP.key, "$7$1$a$b")], [AppEntry(APP.key, "$7$1$a$b")], SERVICE_USER),
    ],
)
def test_bad_or_duplicate_usernames_are_refused(
    devices: list[DeviceEntry], apps: list[AppEntry], service: str
) -> None:
    with pytest.raises(InvalidContent):
        password_file(devices, apps, (service, "$7$1$a$b"))
    with pytest.raises(InvalidContent):
        acl_file(devices, apps, service)


def test_password_file_refuses_a_hash_that_would_break_the_line() -> None:
    for bad in ("plain", "$7$1$a$b\nroot:$7$1$a$b", "$7$1$a:b", ""):
        with pytest.raises(InvalidContent):
            password_file([DeviceEntry(APP.key, "dev1", bad)], [], (SERVICE_USER, "$7$1$a$b"))


def test_mosquitto_conf_refuses_values_that_would_inject_options() -> None:
    def conf(acl: str = "/a", passwd: str = "/p", port: int = 1883) -> str:
        return mosquitto_conf(host="127.0.0.1", port=port, password_file=passwd, acl_file=acl)

    assert "allow_anonymous false\n" in conf() and "listener 1883 127.0.0.1\n" in conf()
    bad: list[dict[str, Any]] = [{"acl": "/a\nallow_anonymous true"}, {"passwd": ""}, {"port": 0}]
    for kwargs in bad:
        with pytest.raises(InvalidContent):
            conf(**kwargs)


def test_mosquitto_conf_runs_the_broker_as_the_owner_of_the_files_by_default() -> None:
    # The bridge writes passwords and acl owner-only: a broker started as root must not drop to
    # "mosquitto" (issue 13: "Unable to write pid file."), but run as whoever writes them.
    default = mosquitto_conf(host="127.0.0.1", port=1883, password_file="/p", acl_file="/a")
    assert f"user {pwd.getpwuid(os.geteuid()).pw_name}\n" in default
    chosen = mosquitto_conf(host="127.0.0.1", port=1883, password_file="/p", acl_file="/a", user="mqtt")
    assert "user mqtt\n" in chosen and default.count("user ") == chosen.count("user ") == 1


def test_write_atomically_replaces_the_whole_file_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "acl"
    path.write_text("old and longer than the new one\n")
    write_atomically(path, "new\n")
    assert path.read_text() == "new\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["acl"]  # no temporary file left behind


# --- authentication -----------------------------------------------------------------------------


def test_broker_listens_only_where_configured(broker: Broker) -> None:
    opened = [line for line in broker.log.splitlines() if "listen socket" in line]
    assert opened and all(line.endswith(f"on port {broker.port}.") for line in opened), opened
    assert int(broker.pid_file.read_text()) == broker.proc.pid


def test_tokens_hashed_by_us_are_accepted_and_anything_else_gets_connack_5(broker: Broker) -> None:
    assert broker.connack(ALICE.id, ALICE.token) == CONNACK_ACCEPTED
    assert broker.connack(APP.key, APP.secret) == CONNACK_ACCEPTED
    assert broker.connack(SERVICE_USER, SERVICE_PASSWORD) == CONNACK_ACCEPTED
    for username, password in [
        (ALICE.id, ALICE.token + "x"),
        (ALICE.id, BOB.token),
        (ALICE.id, None),
        (None, None),  # anonymous
        ("dnobodyaaaaaaaaaaaaaa", ALICE.token),
        (SERVICE_USER, ALICE.token),
        (APP.key, ALICE.token),
    ]:
        assert broker.connack(username, password) == CONNACK_NOT_AUTHORISED, (username, password)


def test_mosquitto_sub_as_a_device_gets_its_inbox_and_a_wrong_token_is_not_authorised(broker: Broker) -> None:
    service = broker.service()
    service.publish(ALICE.inbox("m1"), "for alice", retain=True)
    base = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-W", "5"]
    sub = [*base, "-u", ALICE.id, "-t", topics.inbox_filter(ALICE.app, ALICE.id), "-C", "1", "-v"]
    ok = subprocess.run([*sub, "-P", ALICE.token], capture_output=True, text=True, timeout=10)
    assert (ok.returncode, ok.stdout) == (0, f"{ALICE.inbox('m1')} for alice\n")
    bad = subprocess.run([*sub, "-P", BOB.token], capture_output=True, text=True, timeout=10)
    assert bad.returncode != 0 and "not authorised" in bad.stderr
    service.close()


def test_a_device_cannot_take_over_another_devices_client_id(broker: Broker) -> None:
    """The device protocol (docs/protocol.md) has client_id = device_id; mosquitto enforces it by replacing the id with the username."""
    alice = broker.client(ALICE.id, ALICE.token, client_id=ALICE.id)
    assert alice.subscribe(topics.inbox_filter(ALICE.app, ALICE.id)) == [GRANTED_QOS1]
    intruder, code = raw_connect(broker.port, BOB.id, BOB.token, client_id=ALICE.id)
    assert code == CONNACK_ACCEPTED  # connected, but as BOB's own client id
    service = broker.service()
    service.publish(ALICE.inbox("m1"), "still here")
    assert _seen(alice.until(ALICE.inbox("m1"), "still here")) == [(ALICE.inbox("m1"), b"still here")]
    assert not alice.disconnected.is_set()
    intruder.close()
    for c in (alice, service):
        c.close()


# --- subscribe and receive ----------------------------------------------------------------------

FORBIDDEN_FILTERS = [
    topics.inbox_filter(BOB.app, BOB.id),
    f"mqttpush/{APP.key}/d/+/m/+",
    "mqttpush/#",
    "#",
    topics.broadcast_filter(OTHER_APP.key),
    topics.receipt_topic(BOB.app, BOB.id),
]


def test_device_gets_granted_qos_for_its_inbox_and_broadcast(broker: Broker) -> None:
    alice = broker.client(ALICE.id, ALICE.token)
    assert alice.subscribe(topics.inbox_filter(ALICE.app, ALICE.id), topics.broadcast_filter(APP.key)) == [
        GRANTED_QOS1,
        GRANTED_QOS1,
    ]
    alice.close()


def test_witness_mosquitto_acl_file_grants_every_subscribe(broker: Broker) -> None:
    """Witness of a mosquitto 2.0 limit, not a wish: its acl_file check returns success for every
    SUBSCRIBE ("FIXME - implement ACL subscription strings" in the source), so a forbidden filter
    gets its QoS granted instead of 0x80 (docs/protocol.md). The ACL bites on delivery instead: see
    the test below. If this starts failing, mosquitto now refuses them: assert 0x80 here."""
    alice = broker.client(ALICE.id, ALICE.token)
    assert alice.subscribe(*FORBIDDEN_FILTERS) == [GRANTED_QOS1] * len(FORBIDDEN_FILTERS)
    alice.close()


def test_device_never_receives_a_message_outside_its_acl_live_or_retained(broker: Broker) -> None:
    service = broker.service()
    for topic, text in [
        (BOB.inbox("secret"), "bob's retained"),
        (CAROL.inbox("secret"), "carol's retained"),
        (topics.broadcast_topic(OTHER_APP.key, "b1"), "other app's broadcast"),
        (ALICE.inbox("m1"), "alice's retained"),
        (topics.broadcast_topic(APP.key, "b1"), "app broadcast"),
    ]:
        service.publish(topic, text, retain=True)

    alice = broker.client(ALICE.id, ALICE.token)
    # Every wildcard that would cover other devices' retained messages, then her own filters:
    # mosquitto sends a filter's retained messages right after its SUBACK, in order.
    alice.subscribe(*FORBIDDEN_FILTERS)
    alice.subscribe(topics.inbox_filter(ALICE.app, ALICE.id), topics.broadcast_filter(APP.key))
    # Live messages too, while all those filters are active; her own inbox last, as the barrier.
    service.publish(BOB.inbox("live"), "bob's live")
    service.publish(topics.broadcast_topic(OTHER_APP.key, "b2"), "other app's live broadcast")
    service.publish(ALICE.inbox("barrier"), "barrier")
    got = alice.until(ALICE.inbox("barrier"), "barrier")

    allowed = {ALICE.inbox("m1"), topics.broadcast_topic(APP.key, "b1"), ALICE.inbox("barrier")}
    assert _topics(got) == allowed, _seen(got)
    assert all(m.retain for m in got if m.topic != ALICE.inbox("barrier"))
    for c in (alice, service):
        c.close()


# --- publish ------------------------------------------------------------------------------------


def test_device_publishes_only_its_own_receipt_and_presence(broker: Broker) -> None:
    service = broker.service()
    assert service.subscribe("mqttpush/#") == [GRANTED_QOS1]
    alice = broker.client(ALICE.id, ALICE.token)
    forged = [
        topics.receipt_topic(BOB.app, BOB.id),
        topics.presence_topic(BOB.app, BOB.id),
        BOB.inbox("forged"),
        ALICE.inbox("self-made"),
        topics.broadcast_topic(APP.key, "forged"),
        f"mqttpush/{APP.key}/api/push",
        topics.receipt_topic(CAROL.app, CAROL.id),
    ]
    for topic in forged:
        alice.publish(topic, "forged")
    alice.publish(topics.presence_topic(ALICE.app, ALICE.id), "online", retain=True)
    alice.publish(topics.receipt_topic(ALICE.app, ALICE.id), "receipt")
    got = service.until(topics.receipt_topic(ALICE.app, ALICE.id), "receipt")
    assert _seen(got) == [
        (topics.presence_topic(ALICE.app, ALICE.id), b"online"),
        (topics.receipt_topic(ALICE.app, ALICE.id), b"receipt"),
    ]
    for c in (alice, service):
        c.close()


def test_device_will_reaches_the_service_only_on_its_own_presence_topic(broker: Broker) -> None:
    service = broker.service()
    service.subscribe("mqttpush/#")
    own_presence = topics.presence_topic(ALICE.app, ALICE.id)
    # mosquitto accepts a CONNECT with a foreign Will topic but drops the Will at publish time.
    for will_topic in (topics.presence_topic(BOB.app, BOB.id), own_presence):
        sock, code = raw_connect(broker.port, ALICE.id, ALICE.token, will=(will_topic, "offline"))
        assert code == CONNACK_ACCEPTED
        sock.close()  # no DISCONNECT: the Will is published
    got = service.until(own_presence, "offline")
    assert _seen(got) == [(own_presence, b"offline")]
    service.close()


# --- the app publisher and the service ------------------------------------------------------------


def test_app_publisher_writes_its_push_topic_and_reads_its_results_only(broker: Broker) -> None:
    push, result = f"mqttpush/{APP.key}/api/push", f"mqttpush/{APP.key}/api/result/r1"
    service = broker.service()
    service.subscribe("mqttpush/#")
    app = broker.client(APP.key, APP.secret)
    app.subscribe(f"mqttpush/{APP.key}/api/result/+", f"mqttpush/{OTHER_APP.key}/api/result/+")
    for topic in (
        f"mqttpush/{OTHER_APP.key}/api/push",
        ALICE.inbox("x"),
        topics.broadcast_topic(APP.key, "x"),
    ):
        app.publish(topic, "forged")
    app.publish(push, "request")
    assert _seen(service.until(push, "request")) == [(push, b"request")]

    service.publish(f"mqttpush/{OTHER_APP.key}/api/result/r1", "not yours")
    service.publish(result, "result")
    assert _seen(app.until(result, "result")) == [(result, b"result")]
    for c in (app, service):
        c.close()


def test_service_reads_and_writes_anywhere_under_mqttpush(broker: Broker) -> None:
    service = broker.service()
    assert service.subscribe("mqttpush/#") == [GRANTED_QOS1]
    sent = [
        (ALICE.inbox("m1"), "push"),
        (topics.broadcast_topic(OTHER_APP.key, "b1"), "broadcast"),
        (f"mqttpush/{APP.key}/api/result/r1", "result"),
        (topics.receipt_topic(CAROL.app, CAROL.id), "receipt"),
    ]
    for topic, text in sent:
        service.publish(topic, text)
    got = service.until(*sent[-1])
    assert _seen(got) == [(t, p.encode()) for t, p in sent]
    service.close()


# --- rolling out a change -----------------------------------------------------------------------


def test_new_device_is_accepted_after_rewrite_and_sighup_without_restart(broker: Broker) -> None:
    dave = Device(APP.key, "ddavedddddddddddddddd", ids.new_secret())
    alice = broker.client(ALICE.id, ALICE.token)
    assert broker.connack(dave.id, dave.token) == CONNACK_NOT_AUTHORISED

    write_files(broker.dir, [ALICE, BOB, CAROL, dave], [APP, OTHER_APP])
    assert reload(broker.pid_file)
    _poll(lambda: broker.connack(dave.id, dave.token) == CONNACK_ACCEPTED, "the new device to be accepted")

    dave_client = broker.client(dave.id, dave.token)
    dave_client.subscribe(topics.inbox_filter(dave.app, dave.id))
    service = broker.service()
    service.publish(dave.inbox("m1"), "hello dave")
    assert _seen(dave_client.until(dave.inbox("m1"), "hello dave")) == [(dave.inbox("m1"), b"hello dave")]
    assert broker.proc.poll() is None and not alice.disconnected.is_set()  # same broker, no one dropped
    for c in (alice, dave_client, service):
        c.close()


def test_removed_device_is_disconnected_on_reload_and_refused_after(broker: Broker) -> None:
    bob = broker.client(BOB.id, BOB.token)
    write_files(broker.dir, [ALICE, CAROL], [APP, OTHER_APP])
    assert reload(broker.pid_file)
    assert bob.disconnected.wait(TIMEOUT), "mosquitto kept a revoked device connected"
    assert broker.connack(BOB.id, BOB.token) == CONNACK_NOT_AUTHORISED
    assert broker.connack(ALICE.id, ALICE.token) == CONNACK_ACCEPTED
    bob.close()


def test_reload_without_a_mosquitto_to_signal_returns_false(tmp_path: Path) -> None:
    pid_file = tmp_path / "mosquitto.pid"
    assert not reload(pid_file)  # no pid file
    pid_file.write_text("not a pid\n")
    assert not reload(pid_file)
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    pid_file.write_text(f"{gone.pid}\n")
    assert not reload(pid_file)
    # A stale pid now used by another program: SIGHUP would kill it, so it is left alone.
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        pid_file.write_text(f"{other.pid}\n")
        assert not reload(pid_file)
        assert other.poll() is None
    finally:
        assert other.stdin is not None
        other.stdin.close()
        assert other.wait(TIMEOUT) == 0
