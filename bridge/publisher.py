"""How the bridge hands messages to MQTT, whatever broker is underneath."""

from __future__ import annotations

from typing import Protocol

from mqttpush.broker import PushBroker


class Publisher(Protocol):
    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish one message; returns once the broker has taken it."""
        ...

    async def clear_retained(self, topic: str) -> None:
        """Remove the retained message of ``topic``."""
        ...


class BrokerPublisher:
    """In-process publishing into the embedded broker: no socket, no serialization round trip."""

    def __init__(self, broker: PushBroker) -> None:
        self._broker = broker

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        await self._broker.publish(topic, payload, qos=qos, retain=retain)

    async def clear_retained(self, topic: str) -> None:
        await self._broker.clear_retained(topic)
