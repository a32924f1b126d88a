"""The optional listeners: MQTT over WebSocket (browsers), over TLS, and over WebSocket over TLS,
each driven by paho-mqtt as a device would, plus the WebSocket upgrade's refusals."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from click.testing import CliRunner

from mqttpush.broker.websocket import accept_key
from mqttpush.cli import main
from tests.conftest import Running, _serve
from tests.fakes.tls import make_ca


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    return make_ca(tmp_path_factory.mktemp("certs"))


@pytest.fixture(params=["one process", "broker process"])
def listening(
    request: pytest.FixtureRequest, tmp_path: Path, certs: tuple[str, str, str]
) -> Iterator[Running]:
    """Every listener on, in both shapes of ``serve`` (the broker process binds them all)."""
    _, cert, key = certs
    yield from _serve(
        tmp_path / "data",
        dual=request.param == "broker process",
        ws_port=0,
        mqtts_port=0,
        wss_port=0,
        tls_cert=Path(cert),
        tls_key=Path(key),
    )


def _ports(r: Running) -> dict[str, int]:
    return r.server.listener_ports()


class Device:
    """A paho device on one listener: connects, subscribes to its inbox, collects messages."""

    def __init__(self, port: int, device: str, token: str, transport: str, ca: str | None) -> None:
        self.messages: list[paho.MQTTMessage] = []
        self.got = threading.Event()
        self.subscribed = threading.Event()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=device, transport=transport)
        self.c.username_pw_set(device, token)
        if ca is not None:
            self.c.tls_set(ca_certs=ca)
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *_: self.subscribed.set()
        self.connected: list[Any] = []  # reason codes of CONNACKs
        self.connack = threading.Event()
        self.c.on_connect = self._on_connect
        self.port = port

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connected.append(rc)
        self.connack.set()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        self.messages.append(msg)
        self.got.set()

    def __enter__(self) -> Device:
        self.c.connect("127.0.0.1", self.port)
        self.c.loop_start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.parametrize(
    ("listener", "transport", "tls"),
    [("ws", "websockets", False), ("mqtts", "tcp", True), ("wss", "websockets", True)],
)
def test_device_on_each_listener_gets_its_push_and_its_receipt_counts(
    listening: Running, certs: tuple[str, str, str], listener: str, transport: str, tls: bool
) -> None:
    r = listening
    ((device, token),) = r.register()
    port = _ports(r)[f"{listener}_port"]
    with Device(port, device, token, transport, certs[0] if tls else None) as d:
        d.c.subscribe(f"mqttpush/{r.app_key}/d/{device}/m/+", qos=1)
        assert d.subscribed.wait(10) and d.connected == [0]
        msg_id = r.push([device], "over " + listener)
        assert d.got.wait(10)
        envelope = json.loads(d.messages[0].payload)
        assert (envelope["id"], envelope["title"]) == (msg_id, "over " + listener)
        d.c.publish(
            f"mqttpush/{r.app_key}/d/{device}/r", json.dumps({"id": msg_id, "event": "arrived"}), qos=1
        )
        r.wait_state(msg_id, device, "arrived")


def test_wrong_token_over_websocket_is_refused_with_connack_5(listening: Running) -> None:
    r = listening
    ((device, _token),) = r.register()
    with Device(_ports(r)["ws_port"], device, "wrong", "websockets", None) as d:
        assert d.connack.wait(10)
        assert d.connected[0] == "Not authorized"  # CONNACK return code 5


async def _http(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    return data


def _upgrade(
    extra: str = "", version: str = "13", key: str = base64.b64encode(b"0123456789abcdef").decode()
) -> bytes:
    return (
        "GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n"
    ).encode()


async def test_plain_http_and_old_versions_are_refused(listening: Running) -> None:
    port = _ports(listening)["ws_port"]
    assert (await _http(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 426")
    assert (await _http(port, _upgrade(version="8"))).startswith(b"HTTP/1.1 426")
    assert (await _http(port, b"POST / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 400")
    for key in ("a", "abcde", "", base64.b64encode(b"short").decode()):  # not base64 of 16 bytes
        assert (await _http(port, _upgrade(key=key))).startswith(b"HTTP/1.1 426")


async def test_upgrade_answers_the_accept_key_and_the_mqtt_subprotocol(listening: Running) -> None:
    answer = await _http(_ports(listening)["ws_port"], _upgrade("Sec-WebSocket-Protocol: mqtt\r\n"))
    head = answer.decode("latin-1")
    assert head.startswith("HTTP/1.1 101")
    assert f"Sec-WebSocket-Accept: {accept_key(base64.b64encode(b'0123456789abcdef').decode())}\r\n" in head
    assert "Sec-WebSocket-Protocol: mqtt\r\n" in head


async def _ws(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_upgrade("Sec-WebSocket-Protocol: mqtt\r\n"))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer


def _client_frame(
    opcode: int, payload: bytes, mask: bytes = b"\x01\x02\x03\x04", final: bool = True
) -> bytes:
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(((0x80 if final else 0) | opcode, 0x80 | len(payload))) + mask + masked


async def test_ping_gets_pong_and_a_fragmented_connect_is_understood(listening: Running) -> None:
    r = listening
    ((device, token),) = r.register()
    reader, writer = await _ws(_ports(r)["ws_port"])
    writer.write(_client_frame(0x9, b"hi"))
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x8a\x02hi"
    from tests.mqtt_raw import _str, packet

    connect = packet(
        0x10, _str("MQTT") + bytes([4, 0xC2]) + b"\x00\x3c" + _str(device) + _str(device) + _str(token)
    )
    writer.write(_client_frame(0x2, connect[:7], final=False) + _client_frame(0x0, connect[7:]))
    assert await asyncio.wait_for(reader.readexactly(6), 5) == b"\x82\x04\x20\x02\x00\x00"  # CONNACK 0
    writer.close()


@pytest.mark.parametrize(
    "bad",
    [
        _client_frame(0x1, b"text"),
        bytes((0x82, 0x02)) + b"\x10\x00",
        bytes((0xC2, 0x80)) + b"\x00\x00\x00\x00",
        _client_frame(0x9, b"ping", final=False),
    ],
    ids=["text frame", "unmasked", "reserved bit", "fragmented ping"],
)
async def test_protocol_errors_close_with_1002(listening: Running, bad: bytes) -> None:
    reader, writer = await _ws(_ports(listening)["ws_port"])
    writer.write(bad)
    assert await asyncio.wait_for(reader.read(64), 5) == b"\x88\x02\x03\xea"  # close 1002
    assert await asyncio.wait_for(reader.read(64), 5) == b""
    writer.close()


def test_tls_port_without_certificate_is_a_usage_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["serve", "--data-dir", str(tmp_path), "--mqtts-port", "0"])
    assert res.exit_code == 2 and "--mqtts-port" in res.output
    res = CliRunner().invoke(
        main, ["broker", "--data-dir", str(tmp_path), "--tls-cert", __file__, "--wss-port", "0"]
    )
    assert res.exit_code == 2 and "--tls-key" in res.output


def test_accept_key_is_rfc_6455s_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3
