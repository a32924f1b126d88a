"""CONNECT from a client of another MQTT version (issue 13): MQTT 5 and MQTT 3.1 are told
"unacceptable protocol level" (CONNACK 0x01) at once and the connection is closed (MQTT-3.1.2-2),
instead of hanging until the connect timeout; a protocol that is not MQTT is closed unanswered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mqttpush.broker import PushBroker
from mqttpush.broker.wire import Malformed, connect_refusal
from mqttpush.topics import Identity
from tests.broker.test_amqtt_defects import PlainAmqtt, plain  # noqa: F401  (fixture)
from tests.mqtt_raw import RawClient, connect_packet, first_answer

PROMPT = 3.0  # well under the broker's connect timeout below: an answer in time is not the timeout
REFUSED_PROTOCOL = b"\x20\x02\x00\x01"  # CONNACK, session present 0, return code 0x01


@pytest.fixture
async def broker() -> AsyncIterator[PushBroker]:
    async def nobody(client_id: str, user: str | None, password: str | None) -> Identity | None:
        return None  # a 3.1.1 CONNECT reaching authentication is all these tests need

    b = PushBroker(host="127.0.0.1", port=0, authenticator=nobody, connect_timeout=30)
    await b.start()
    yield b
    await b.shutdown()


MQTT5_CONNECT = connect_packet("dev5", level=5, properties=b"\x21\x00\x14")  # Receive Maximum 20


async def test_witness_plain_amqtt_never_answers_an_mqtt5_connect(plain: PlainAmqtt) -> None:  # noqa: F811
    got, closed = await first_answer(plain.port, MQTT5_CONNECT, 1.0)
    assert (got, closed) == (b"", False)


@pytest.mark.parametrize(
    "connect",
    [
        MQTT5_CONNECT,
        connect_packet("dev5", level=5, properties=b""),
        connect_packet("dev31", protocol="MQIsdp", level=3),
        connect_packet("dev3", level=3),
    ],
    ids=["mqtt5 with properties", "mqtt5 without properties", "mqtt 3.1 MQIsdp", "MQTT level 3"],
)
async def test_other_mqtt_versions_get_connack_1_and_are_closed(broker: PushBroker, connect: bytes) -> None:
    got, closed = await first_answer(broker.port, connect, PROMPT)
    assert (got, closed) == (REFUSED_PROTOCOL, True)


async def test_a_protocol_that_is_not_mqtt_is_closed_without_connack(broker: PushBroker) -> None:
    got, closed = await first_answer(broker.port, connect_packet("x", protocol="HTTP", level=4), PROMPT)
    assert (got, closed) == (b"", True)


async def test_a_first_packet_that_is_not_connect_is_closed(broker: PushBroker) -> None:
    got, closed = await first_answer(broker.port, b"\xc0\x00", PROMPT)  # PINGREQ
    assert (got, closed) == (b"", True)


async def test_mqtt_311_still_connects(broker: PushBroker) -> None:
    c, code, _ = await RawClient.connect(broker.port, "dev", "dev", "t", timeout=PROMPT)
    assert code == 5  # reached authentication: refused there by this broker's authenticator
    assert await c.closed_by_server(PROMPT)


@pytest.mark.parametrize(
    ("version", "says"),
    [
        (
            "mqttv5",
            "unsupported protocol version. try connecting to an mqtt v5 broker, or use mqtt v3.x mode",
        ),
        ("mqttv31", "connection refused: unacceptable protocol version"),
    ],
)
async def test_mosquitto_sub_hears_the_refusal_promptly(broker: PushBroker, version: str, says: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *("mosquitto_sub", "-V", version, "-h", "127.0.0.1", "-p", str(broker.port)),
        *("-i", "dev5", "-t", "mqttpush/a/d/dev5/m/+"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), PROMPT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode != 0
    assert says in (out + err).decode().lower()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"\x00\x04MQTT\x04\x02\x00\x3c", 0),
        (b"\x00\x04MQTT\x05\x02\x00\x3c\x00", 1),
        (b"\x00\x06MQIsdp\x03\x02\x00\x3c", 1),
        (b"\x00\x04MQTT\x00", 1),
    ],
)
def test_connect_refusal_codes(body: bytes, code: int) -> None:
    assert connect_refusal(body) == code


@pytest.mark.parametrize(
    "body", [b"", b"\x00\x04MQ", b"\x00\x04MQTT", b"\x00\x04mqtt\x04", b"\x00\x01\xff\x04"]
)
def test_connect_refusal_malformed(body: Any) -> None:
    with pytest.raises(Malformed):
        connect_refusal(body)
