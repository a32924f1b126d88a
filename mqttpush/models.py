"""Domain values shared by store, bridge and API."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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
class MessageStatus:
    msg_id: str
    app_key: str
    created_at: float
    expires_at: float
    deliveries: list[dict[str, Any]]


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


class Policy(BaseModel):
    """How a message is sent (docs/delivery.md). Unknown keys are refused, so a typo never
    silently drops a policy."""

    model_config = ConfigDict(extra="forbid")

    ttl: int | None = Field(default=None, gt=0)
    biz_id: str | None = Field(default=None, min_length=1, max_length=128)
    strategy: str | None = Field(default=None, pattern=r"^(mqtt|mqtt_else_vendor|vendor_first|vendor)$")
    start_at: float | None = Field(default=None, gt=0)
    schedule: dict[str, Any] | None = None
    approval: bool | None = None
    priority: str = Field(default="normal", pattern=r"^(high|normal)$")
    production: bool = True
    pace: dict[str, Any] | None = None
    quiet_hours: dict[str, Any] | bool | None = None
    daily_cap: int | None = Field(default=None, ge=1)
    over_cap: str = Field(default="hold", pattern=r"^(hold|drop)$")
    repush: dict[str, Any] | None = None


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
    daily_cap: int | None = Field(default=None, ge=1)
    over_cap: str = Field(default="hold", pattern=r"^(hold|drop)$")
    inbox_limit: int = Field(default=1000, ge=1, le=100_000)


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
