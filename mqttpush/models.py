"""Domain values shared by store, bridge and API."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from mqttpush.errors import BadRequest, InvalidContent


class Platform(StrEnum):
    ANDROID = "android"
    IOS = "ios"
    WEB = "web"
    IOT = "iot"


class DeliveryState(StrEnum):
    """docs/delivery.md: ``accepted → queued → published|forwarded → arrived → opened`` or a terminal state."""

    ACCEPTED = "accepted"
    QUEUED = "queued"
    PUBLISHED = "published"
    FORWARDED = "forwarded"
    ARRIVED = "arrived"
    OPENED = "opened"
    DISMISSED = "dismissed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    FAILED = "failed"
    DROPPED = "dropped"


# Progress order; a delivery only moves forward. Terminal states never move again.
_RANK = {
    DeliveryState.ACCEPTED: 0,
    DeliveryState.QUEUED: 1,
    DeliveryState.PUBLISHED: 2,
    DeliveryState.FORWARDED: 2,
    DeliveryState.ARRIVED: 3,
    DeliveryState.OPENED: 4,
    DeliveryState.DISMISSED: 4,
}
PENDING_STATES = (DeliveryState.ACCEPTED, DeliveryState.QUEUED, DeliveryState.PUBLISHED)
TERMINAL_STATES = (
    DeliveryState.EXPIRED,
    DeliveryState.CANCELLED,
    DeliveryState.FAILED,
    DeliveryState.DROPPED,
)


def advances(current: DeliveryState, new: DeliveryState) -> bool:
    """True if a delivery in ``current`` may move to ``new``.

    Forward along the progress order; into a terminal state only while not yet arrived
    (a message the device has cannot expire or fail any more); never out of a terminal state.
    """
    if current in TERMINAL_STATES:
        return False
    if new in TERMINAL_STATES:
        return _RANK[current] < _RANK[DeliveryState.ARRIVED]
    return _RANK[new] > _RANK[current]


class ReceiptEvent(StrEnum):
    ARRIVED = "arrived"
    OPENED = "opened"
    DISMISSED = "dismissed"


@dataclass(frozen=True, slots=True)
class App:
    app_key: str
    name: str
    secret: str
    previous_secret: str | None = None
    previous_until: float = 0.0

    def secrets_at(self, now: float) -> tuple[str, ...]:
        """The secrets that verify a signature at ``now``: the current one and, within the
        overlap of a rotation, the one it replaced."""
        if self.previous_secret is not None and now < self.previous_until:
            return (self.secret, self.previous_secret)
        return (self.secret,)


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    app_key: str
    install_id: str
    platform: str
    app_version: str | None
    locale: str | None
    online: bool
    last_seen: float | None
    created_at: float


@dataclass(frozen=True, slots=True)
class Registration:
    device_id: str
    device_token: str
    created: bool


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    """An undelivered, unexpired delivery the bridge must (re)publish."""

    msg_id: str
    app_key: str
    device_id: str
    state: DeliveryState
    payload: bytes
    expires_at: float
    fanout: str = "inbox"


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    """One entry of a delivery's history: the state it moved to, when, and why where it was said."""

    state: str
    at: float
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    """One device's delivery of a message, its history oldest first."""

    device_id: str
    state: str
    channel: str
    attempts: int
    error: str | None
    updated_at: float
    history: tuple[DeliveryEvent, ...]


@dataclass(frozen=True, slots=True)
class MessageStatus:
    msg_id: str
    app_key: str
    created_at: float
    expires_at: float
    deliveries: list[DeliveryStatus]


# --- push requests (docs/api.md), validated at the edge, used by the bridge ------------------


class Notification(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = None
    body: str | None = None
    image: str | None = None
    url: str | None = None
    sound: str | None = None
    badge: int | None = Field(default=None, ge=0)
    category: str | None = None


# Bounds of every policy number (docs/delivery.md). Out of bounds: 422 ``bad_policy``
# (``bad_schedule`` inside ``schedule``); ``ttl`` has its own (``ttl_too_long``, from the config).
LATEST_TIME = 4_102_444_800.0
"""2100-01-01T00:00:00Z: the latest ``start_at`` and ``schedule.until``."""
DAILY_CAP_MAX = 10_000
SCHEDULE_COUNT_MAX = 10_000
PACE_BOUNDS = {"per_second": (0.01, 100_000.0), "over_minutes": (1.0, 14_400.0)}
REPUSH_AFTER_BOUNDS = (1.0, 864_000.0)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _out_of_bounds(value: Any, low: float, high: float) -> bool:
    """A number outside ``[low, high]`` (NaN included); anything else is for bridge/policy.py to refuse."""
    return _number(value) and not low <= value <= high


def _refuse(code: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(code, message)


class Policy(BaseModel):
    """How a message is sent (docs/delivery.md). Unknown keys are refused, so a typo never
    silently drops a policy."""

    model_config = ConfigDict(extra="forbid")

    ttl: int | None = Field(default=None, gt=0)
    biz_id: str | None = Field(default=None, min_length=1, max_length=128)
    strategy: str | None = Field(default=None, pattern=r"^(mqtt|mqtt_else_vendor|vendor_first|vendor)$")
    start_at: float | None = None
    schedule: dict[str, Any] | None = None
    approval: bool | None = None
    priority: str = Field(default="normal", pattern=r"^(high|normal)$")
    production: bool = True
    pace: dict[str, Any] | None = None
    quiet_hours: dict[str, Any] | bool | None = None
    daily_cap: int | None = None
    over_cap: str = Field(default="hold", pattern=r"^(hold|drop)$")
    repush: dict[str, Any] | None = None

    @field_validator("start_at")
    @classmethod
    def _start_at_bounds(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value <= LATEST_TIME:
            raise _refuse("bad_policy", f"policy.start_at must be unix seconds in (0, {LATEST_TIME:.0f}]")
        return value

    @field_validator("daily_cap")
    @classmethod
    def _daily_cap_bounds(cls, value: int | None) -> int | None:
        return _daily_cap(value, "policy.daily_cap")

    @field_validator("pace")
    @classmethod
    def _pace_bounds(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        for key, (low, high) in PACE_BOUNDS.items():
            if value is not None and _out_of_bounds(value.get(key), low, high):
                raise _refuse("bad_policy", f"policy.pace.{key} must be {low:g}-{high:g}")
        return value

    @field_validator("repush")
    @classmethod
    def _repush_bounds(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        low, high = REPUSH_AFTER_BOUNDS
        if value is not None and _out_of_bounds(value.get("after"), low, high):
            raise _refuse("bad_policy", f"policy.repush.after must be {low:g}-{high:g} seconds")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule_bounds(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and _out_of_bounds(value.get("until"), 0, LATEST_TIME):
            raise _refuse(
                "bad_schedule", f"policy.schedule.until must be unix seconds up to {LATEST_TIME:.0f}"
            )
        if value is not None and _out_of_bounds(value.get("count"), 1, SCHEDULE_COUNT_MAX):
            raise _refuse("bad_schedule", f"policy.schedule.count must be 1-{SCHEDULE_COUNT_MAX}")
        return value


def _daily_cap(value: int | None, where: str) -> int | None:
    if value is not None and not 1 <= value <= DAILY_CAP_MAX:
        raise _refuse("bad_policy", f"{where} must be 1-{DAILY_CAP_MAX}")
    return value


class Content(BaseModel):
    """What a push says: inline, or a stored template with its variables."""

    model_config = ConfigDict(extra="forbid")

    notification: Notification | None = None
    data: dict[str, Any] | None = None
    type: str | None = None
    template: str | None = Field(default=None, min_length=1, max_length=64)
    vars: dict[str, Any] | None = None


class PushRequest(Content):
    target: dict[str, Any]
    policy: Policy = Field(default_factory=Policy)


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str | None = None
    alias: str | None = None
    alias_type: str = "user"
    vars: dict[str, Any] = Field(default_factory=dict)


class BatchRequest(Content):
    """One request, many messages: each item gets the template rendered with its own variables."""

    items: list[BatchItem] = Field(min_length=1, max_length=1000)
    policy: Policy = Field(default_factory=Policy)


class TemplateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    notification: Notification | None = None
    data: dict[str, Any] | None = None
    type: str | None = None


class TagsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    add: list[str] = Field(default_factory=list, max_length=100)
    remove: list[str] = Field(default_factory=list, max_length=100)


class AliasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str = Field(min_length=1, max_length=128)
    alias_type: str = Field(default="user", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    mode: str = Field(default="set", pattern=r"^(set|add)$")


class DeviceUpdateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    test: bool | None = None
    app_version: str | None = Field(default=None, max_length=64)
    channel: str | None = Field(default=None, max_length=64)
    locale: str | None = Field(default=None, max_length=35)
    timezone: str | None = Field(default=None, max_length=64)


class AppSettings(BaseModel):
    """Per-app defaults of the delivery policy (``PUT /api/v1/settings``)."""

    model_config = ConfigDict(extra="forbid")

    require_approval: bool = False
    quiet_hours: dict[str, Any] | None = None
    daily_cap: int | None = None
    over_cap: str = Field(default="hold", pattern=r"^(hold|drop)$")
    inbox_limit: int = Field(default=1000, ge=1, le=100_000)

    @field_validator("daily_cap")
    @classmethod
    def _daily_cap_bounds(cls, value: int | None) -> int | None:
        return _daily_cap(value, "daily_cap")


class VendorTokenRequest(BaseModel):
    """A device's token for a vendor channel; WebPush gives its subscription instead."""

    model_config = ConfigDict(extra="forbid")

    vendor: str = Field(pattern=r"^(apns|fcm|hms|mipush|webpush)$")
    token: str | None = Field(default=None, min_length=1, max_length=4096)
    subscription: dict[str, Any] | None = None


class ApproveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    approver: str = Field(min_length=1, max_length=128)


class DeviceRegistrationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    install_id: str = Field(min_length=1, max_length=128)
    platform: Platform
    app_version: str | None = Field(default=None, max_length=64)
    locale: str | None = Field(default=None, max_length=35)
    channel: str | None = Field(default=None, max_length=64)
    timezone: str | None = Field(default=None, max_length=64)


# --- request JSON, strictly (docs/api.md "Errors") -------------------------------------------------

M = TypeVar("M", bound=BaseModel)
# Codes a model's own validators give (PydanticCustomError types); any other failure is invalid_request.
_VALIDATOR_CODES = frozenset({"bad_policy", "bad_schedule"})


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object: 400 ``malformed_json`` unless it is one, 422 if it holds
    what mqttpush could never send on (see :func:`check_json_values`)."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", code="malformed_json") from None
    if not isinstance(obj, dict):
        raise BadRequest("body must be a JSON object", code="malformed_json")
    check_json_values(obj)
    return obj


def check_json_values(obj: Any) -> None:
    """Refuse what Python's json reads but JSON cannot carry on: ``NaN``, ``Infinity``, numbers too
    large for a double (read as infinity), 422 ``invalid_json_number``; lone UTF-16 surrogates
    (``"\\ud800"``), which have no UTF-8 form, 422 ``invalid_unicode``. The message names the place."""
    try:  # the common case, in C: everything encodes
        json.dumps(obj, allow_nan=False, ensure_ascii=False).encode()
        return
    except (ValueError, RecursionError):
        pass
    stack: list[tuple[str, Any]] = [("body", obj)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidContent(
                f"{where}: NaN and Infinity are not JSON numbers (nor are numbers beyond ±1.8e308)",
                code="invalid_json_number",
            )
        if isinstance(value, str) and not _encodable(value):
            raise InvalidContent(
                f"{where}: a lone UTF-16 surrogate is not Unicode text", code="invalid_unicode"
            )
        if isinstance(value, dict):
            for key, item in value.items():
                if not _encodable(key):
                    raise InvalidContent(
                        f"{where}: a key holds a lone UTF-16 surrogate, which is not Unicode text",
                        code="invalid_unicode",
                    )
                stack.append((f"{where}.{key}" if where != "body" else key, item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def validate_request(model: type[M], obj: dict[str, Any]) -> M:
    """``obj`` as ``model``; 422 with the first problem, its place named in the message."""
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        code = first["type"] if first["type"] in _VALIDATOR_CODES else "invalid_request"
        raise InvalidContent(f"{where}: {first['msg']}", code=code) from None
