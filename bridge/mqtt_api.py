"""The MQTT publish API (docs/targeting.md): push requests published by an app's server over MQTT.

A client logged in with the app's key and secret publishes ``{"request_id": R, ...push request}``
to ``mqttpush/{app}/api/push`` and gets ``{"request_id": R, "msg_id"|"task_id"...}`` or
``{"request_id": R, "error": {"code", "message"}}`` on ``mqttpush/{app}/api/result/{R}``
(QoS 1; subscribe before publishing). The broker's ACL makes sure only that app publishes there.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from bridge.intake import Intake
from bridge.publisher import Publisher
from mqttpush import ids, topics
from mqttpush.errors import MqttPushError
from mqttpush.models import PushRequest, check_json_values, validate_request
from mqttpush.store import Store

log = logging.getLogger("mqttpush.mqtt_api")


def parse_request(payload: bytes) -> tuple[str, PushRequest | MqttPushError]:
    """``(request_id, request)``, or ``(request_id, error)`` for a request that can still be answered.

    Raises ValueError when there is no usable request_id (nowhere to answer)."""
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        raise ValueError("not JSON") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    request_id = obj.pop("request_id", None)
    if not isinstance(request_id, str) or not ids.is_valid_id(request_id):
        raise ValueError("request_id must be 1-64 URL-safe characters")
    try:
        check_json_values(obj)
        return request_id, validate_request(PushRequest, obj)
    except MqttPushError as exc:
        return request_id, exc


class MqttApi:
    def __init__(self, store: Store, intake: Intake, publisher: Publisher) -> None:
        self._store = store
        self._intake = intake
        self._publisher = publisher
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    def feed(self, topic: str, payload: bytes) -> None:
        self._queue.put_nowait((topic, payload))

    async def run(self) -> None:
        while True:
            topic, payload = await self._queue.get()
            try:
                await self._handle(topic, payload)
            except Exception:
                log.exception("MQTT API request failed topic=%s", topic)

    async def _handle(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) != 4 or parts[2:] != ["api", "push"]:
            return
        app_key = parts[1]
        try:
            request_id, request = parse_request(payload)
        except ValueError as exc:
            log.info("MQTT API request dropped app=%s: %s", app_key, exc, extra={"app_key": app_key})
            return
        result: dict[str, Any] = {"request_id": request_id}
        app = await self._store.app(app_key)
        if app is None:
            return
        try:
            if isinstance(request, MqttPushError):
                raise request
            result |= await self._intake.push(app, request)
        except MqttPushError as exc:
            result |= exc.to_json()
        await self._publisher.publish(
            topics.api_result_topic(app_key, request_id),
            json.dumps(result, allow_nan=False).encode(),
            qos=1,
            retain=False,
        )
