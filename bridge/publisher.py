"""How the bridge hands messages to MQTT, whatever broker is underneath.

The bridge sees only :class:`Publisher`. :class:`MqttPublisher` speaks MQTT to any 3.1.1 broker;
the in-process publisher of the embedded server lives with the composition root
(``mqttpush.server``), so the bridge never depends on our broker's classes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from mqttpush.errors import InvalidContent, StartupError

log = logging.getLogger("mqttpush.publisher")

_RECONNECT_MAX = 10
"""Longest wait (s) between reconnect attempts: a restarted broker is rejoined within this."""


class Publisher(Protocol):
    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        expires_at: float | None = None,
    ) -> bool | None:
        """Publish one message; returns once the broker has taken it.

        ``expires_at`` (unix seconds): a broker that can enforce it sends the message to nobody
        after that time (ours, in-process); MQTT 3.1.1 cannot carry it, so over a socket it is
        ignored and devices drop an envelope whose ``expires_at`` has passed.

        False (only from a cluster's publisher, ``mqttpush.cluster``): nobody took this inbox
        message, as no broker node holds the device; it stays pending in the store and goes out
        when the device subscribes on any node.
        """
        ...

    async def clear_retained(self, topic: str) -> None:
        """Remove the retained message of ``topic``."""
        ...


class MqttPublisher:
    """Publishing over MQTT to any 3.1.1 broker (split mode), as the service identity.

    One paho client (its network loop on its own thread) with a persistent session, so receipts
    devices publish while the bridge is down wait for it in the broker. Every publish is QoS 1
    and resolves when its PUBACK arrives; many can be in flight at once.

    When the broker goes away, paho reconnects on its own (every 1 s, backing off to
    ``_RECONNECT_MAX`` s) and sends again every publish not yet acknowledged, so a publish waiting
    across an outage still resolves, and only then is its delivery marked ``published``. A broker
    that comes back without our session (CONNACK session present = 0: restarted, its retained
    messages gone) is subscribed again and ``on_session_lost`` re-publishes from the store.
    """

    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        *,
        subscriptions: tuple[str, ...] = (),
        client_id: str = "mqttpush-bridge",
        max_inflight: int = 1000,
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("mqtt", "tcp") or not parsed.hostname:
            raise InvalidContent(
                f"--broker must look like mqtt://HOST:PORT, not {url!r}", code="bad_broker_url"
            )
        self.host, self.port = parsed.hostname, parsed.port or 1883
        self._subscriptions = subscriptions
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_message: Callable[[str, bytes], None] | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._connected: asyncio.Future[None] | None = None
        self._inflight = asyncio.Semaphore(max_inflight)
        self._on_session_lost: Callable[[], Awaitable[object]] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._recover_again = False
        self._ever_connected = False  # paho's thread only
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=mqtt.MQTTv311
        )
        c.username_pw_set(username, password)
        c.max_inflight_messages_set(max_inflight)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(1, _RECONNECT_MAX)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        c.on_message = self._on_mqtt_message
        self._client = c

    async def start(
        self,
        on_message: Callable[[str, bytes], None],
        timeout: float = 10.0,
        *,
        on_session_lost: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """Connect and subscribe; ``on_message`` runs on the event loop for each incoming message.

        ``on_session_lost`` runs on the event loop after each *re*connect to a broker that had no
        session for us (the first connect is the caller's to follow up); runs never overlap, and
        one that ends while another loss was reported runs again.
        """
        self._loop = asyncio.get_running_loop()
        self._on_message = on_message
        self._on_session_lost = on_session_lost
        self._connected = self._loop.create_future()
        try:
            self._client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise StartupError(f"cannot reach broker {self.host}:{self.port}: {exc}") from None
        self._client.loop_start()
        try:
            await asyncio.wait_for(asyncio.shield(self._connected), timeout)
        except TimeoutError:
            self._client.loop_stop()
            raise StartupError(
                f"broker {self.host}:{self.port} did not accept us within {timeout}s"
            ) from None

    async def stop(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        self._client.disconnect()
        self._client.loop_stop()

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        expires_at: float | None = None,
    ) -> None:
        assert self._loop is not None
        async with self._inflight:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):  # NO_CONN: queued for reconnect
                raise ConnectionError(f"publish refused by the MQTT client: {mqtt.error_string(info.rc)}")
            # PUBACKs are handed to this loop thread too, so the future is in place before any can land.
            fut: asyncio.Future[None] = self._loop.create_future()
            self._pending[info.mid] = fut
            await fut

    async def clear_retained(self, topic: str) -> None:
        # On a foreign broker the only way: an empty retained publish (devices ignore empty payloads).
        await self.publish(topic, b"", qos=1, retain=True)

    # --- paho callbacks, on paho's thread -----------------------------------------------------------

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the bridge: %s", reason)
            return
        first, self._ever_connected = not self._ever_connected, True
        if not first and flags.session_present:
            log.info("reconnected to broker %s:%d, session kept", self.host, self.port)
            return  # subscriptions and retained messages are still there
        if self._subscriptions:
            client.subscribe([(f, 1) for f in self._subscriptions])
        if first:
            if not self._subscriptions:
                self._call(self._set_connected)
        else:
            self._call(self._session_lost)

    def _session_lost(self) -> None:
        log.warning("broker %s:%d came back without our session; re-publishing", self.host, self.port)
        self._recover_again = True
        if self._on_session_lost is not None and (self._recovery is None or self._recovery.done()):
            self._recovery = asyncio.create_task(self._recover())

    async def _recover(self) -> None:
        assert self._on_session_lost is not None
        while self._recover_again:
            self._recover_again = False
            try:
                await self._on_session_lost()
            except Exception:
                # The store still holds it all; the next session loss (or start) tries again.
                log.exception("re-publishing after the broker lost its state failed")

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        if any(code.is_failure for code in codes):
            log.error("broker refused the bridge's subscriptions: %s", codes)
        self._call(self._set_connected)

    def _set_connected(self) -> None:
        if self._connected is not None and not self._connected.done():
            self._connected.set_result(None)

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, _reason: Any, _p: Any) -> None:
        self._call(self._acked, mid)

    def _acked(self, mid: int) -> None:
        fut = self._pending.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _on_mqtt_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if self._on_message is not None:
            self._call(self._on_message, msg.topic, bytes(msg.payload))
