"""Forwarding to vendor channels: retries with backoff and jitter (honouring Retry-After), a rate
limit per vendor, dead tokens removed, auth failures raised as an app-level alarm, and every
outcome stored on the delivery (``forwarded(vendor)`` or ``failed(reason)``, with the attempts
made). A sender that has another way to deliver (``on_failure``) gets the failures instead of
``failed``."""

from __future__ import annotations

import asyncio
import importlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.channels.base import (
    Channel,
    Delivered,
    DropToken,
    Fail,
    Outcome,
    PayloadTooLargeForVendor,
    PushMessage,
    Retry,
)
from mqttpush.clock import Clock
from mqttpush.errors import InvalidContent
from mqttpush.store import Store
from mqttpush.store.vendors import VendorOutcome
from mqttpush.telemetry import Histogram

log = logging.getLogger("mqttpush.vendors")

_RECORD_BATCH = 500
"""Outcomes stored per store call (one transaction each)."""
_IN_FLIGHT = 1000
"""Default requests in flight per app and vendor (``max_in_flight``); HTTP/2 channels also hold
to the server's SETTINGS_MAX_CONCURRENT_STREAMS per connection."""
_RATE = 10_000.0
"""Default sends a second per app and vendor (``rate_per_second``)."""
_MAX_CONNECTIONS = 8
GATEWAY_KEYS = frozenset({"rate_per_second", "max_in_flight", "connections"})
"""VENDORS.json keys every vendor entry takes, read by the gateway, not the channel module."""

ChannelFactory = Callable[[str, dict[str, Any]], Channel]
"""``(vendor, stored config) -> Channel``."""

OnFailure = Callable[[list[tuple["Forward", str]]], Awaitable[None]]
"""Told ``(forward, "vendor: reason")`` for each send that failed for good, instead of ``failed``."""


@dataclass(frozen=True, slots=True)
class Forward:
    """One message for one device through one vendor."""

    message: PushMessage
    device_id: str
    token: str


class _RateLimit:
    """At most ``rate`` sends a second, on the gateway's clock."""

    def __init__(self, clock: Clock, rate: float) -> None:
        self._clock, self._interval, self._next = clock, 1.0 / rate, 0.0

    async def wait(self) -> None:
        now = self._clock.now()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await self._clock.sleep(slot - now)


def outcome_class(outcome: Outcome) -> str:
    """The metrics' label for one vendor answer: ``ok``, ``retry``, ``network``, ``channel_error``,
    ``drop_token``, ``auth`` or ``fail`` (docs/operations.md, "Metrics")."""
    if isinstance(outcome, Delivered):
        return "ok"
    if isinstance(outcome, DropToken):
        return "drop_token"
    if isinstance(outcome, Fail):
        return "auth" if outcome.auth else "fail"
    if outcome.reason == "network":
        return "network"
    return "channel_error" if outcome.reason.startswith("channel error") else "retry"


class VendorStats:
    """Per vendor, in plain numbers for GET /metrics: requests by :func:`outcome_class`, their
    latency, and forwards submitted and not finished yet (sending, or waiting to retry)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.seconds: dict[str, Histogram] = {}
        self.waiting: dict[str, int] = {}

    def observe(self, vendor: str, outcome: Outcome, seconds: float) -> None:
        key = (vendor, outcome_class(outcome))
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.seconds.get(vendor)
        if histogram is None:
            histogram = self.seconds[vendor] = Histogram()
        histogram.observe(seconds)

    def add_waiting(self, vendor: str, n: int) -> None:
        self.waiting[vendor] = self.waiting.get(vendor, 0) + n


class VendorGateway:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        factory: ChannelFactory,
        *,
        max_attempts: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 300.0,
        rate_per_second: float = _RATE,
        recheck_seconds: float = 2.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._factory = factory
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._rate = rate_per_second
        self._channels: dict[tuple[str, str], Channel] = {}
        self._limits: dict[tuple[str, str], _RateLimit] = {}
        self._in_flight: dict[tuple[str, str], int] = {}
        self._configured: dict[str, frozenset[str]] = {}
        # Credentials are also changed by other processes (`mqttpush app vendor set` writes the
        # store directly), so a cached app is re-checked against the store this often.
        self._recheck = recheck_seconds
        self._versions: dict[str, tuple[tuple[str, float], ...]] = {}
        self._checked_at: dict[str, float] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.stats = VendorStats()

    async def configured(self, app_key: str) -> frozenset[str]:
        """Vendors this app has credentials for: cached, and re-checked against the store every
        ``recheck_seconds`` so a change made by any process takes effect within that time."""
        now = self._clock.now()
        if app_key in self._configured and now - self._checked_at.get(app_key, now) < self._recheck:
            return self._configured[app_key]
        version = tuple(await self._store.run(self._store.vendors.vendor_credentials_version, app_key))
        if app_key in self._configured and self._versions.get(app_key) != version:
            log.info(
                "vendor credentials changed app=%s vendors=%s",
                app_key,
                [v for v, _ in version],
                extra={"app_key": app_key},
            )
            await self.forget(app_key)
        self._versions[app_key] = version
        self._checked_at[app_key] = now
        self._configured[app_key] = frozenset(vendor for vendor, _ in version)
        return self._configured[app_key]

    async def forget(self, app_key: str) -> None:
        """Credentials changed: drop cached facts and open channels of this app."""
        self._configured.pop(app_key, None)
        for key in [k for k in self._channels if k[0] == app_key]:
            await self._channels.pop(key).close()

    def submit(
        self, app_key: str, vendor: str, forwards: list[Forward], on_failure: OnFailure | None = None
    ) -> None:
        """Forward in the background; outcomes land in the store.

        With ``on_failure``, a delivery the vendor could not carry does not become ``failed``: it
        is handed to ``on_failure`` (the vendor failure still counts, a dead token is still removed).
        """
        if not forwards:
            return
        self._idle.clear()
        task = asyncio.ensure_future(self._run(app_key, vendor, forwards, on_failure))
        self._pending.add(task)
        self.stats.add_waiting(vendor, len(forwards))
        task.add_done_callback(lambda _: self.stats.add_waiting(vendor, -len(forwards)))
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("vendor forwarding failed: %r", task.exception())
        if not self._pending:
            self._idle.set()

    async def drained(self) -> None:
        await self._idle.wait()

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def _channel(self, app_key: str, vendor: str) -> Channel | None:
        key = (app_key, vendor)
        if key not in self._channels:
            config = await self._store.run(self._store.vendors.vendor_config, app_key, vendor)
            if config is None:
                return None
            obj = config.get("obj") or {}
            self._channels[key] = self._factory(vendor, config)
            self._limits[key] = _RateLimit(self._clock, float(obj.get("rate_per_second", self._rate)))
            self._in_flight[key] = int(obj.get("max_in_flight", _IN_FLIGHT))
        return self._channels[key]

    async def _run(
        self, app_key: str, vendor: str, forwards: list[Forward], on_failure: OnFailure | None
    ) -> None:
        channel = await self._channel(app_key, vendor)
        if channel is None:
            missing: list[tuple[Forward, str, str | None]] = [
                (f, "failed", "no credentials") for f in forwards
            ]
            await self._record(app_key, vendor, missing, 0, on_failure)
            return
        attempt, todo = 0, forwards
        while todo:
            attempt += 1
            retry, wait = await self._attempt(app_key, vendor, channel, todo, attempt, on_failure)
            if retry:
                backoff = min(self._max_backoff, self._backoff * 2 ** (attempt - 1))
                await self._clock.sleep(max(wait, backoff * random.uniform(0.5, 1.0)))
            todo = retry

    async def _attempt(
        self,
        app_key: str,
        vendor: str,
        channel: Channel,
        todo: list[Forward],
        attempt: int,
        on_failure: OnFailure | None,
    ) -> tuple[list[Forward], float]:
        """Send each of ``todo`` once, up to the channel's in-flight limit at a time (a few workers
        pulling from one iterator, not a coroutine per forward), and store outcomes as they come,
        ``_RECORD_BATCH`` per store call. Returns what to retry and the longest Retry-After."""
        pending = iter(todo)
        answered: list[tuple[Forward, Outcome]] = []
        retry: list[Forward] = []
        wait = 0.0

        async def settle() -> None:
            nonlocal wait
            batch = answered[:]
            answered.clear()
            outcomes: list[tuple[Forward, str, str | None]] = []
            alarms: dict[str, None] = {}
            for f, outcome in batch:
                if isinstance(outcome, Delivered):
                    outcomes.append((f, "forwarded", outcome.vendor_id))
                elif isinstance(outcome, DropToken):
                    outcomes.append((f, "dropped_token", outcome.reason))
                elif isinstance(outcome, Fail):
                    if outcome.auth:
                        alarms[outcome.reason] = None
                    outcomes.append((f, "failed", ("auth: " if outcome.auth else "") + outcome.reason))
                elif attempt >= self._max_attempts:
                    outcomes.append((f, "failed", f"gave up after {attempt} attempts: {outcome.reason}"))
                else:
                    retry.append(f)
                    wait = max(wait, outcome.after or 0.0)
            for reason in alarms:
                await self._store.run(self._store.vendors.raise_alarm, app_key, vendor, reason)
            await self._record(app_key, vendor, outcomes, attempt, on_failure)

        async def worker() -> None:
            for f in pending:
                answered.append((f, await self._send(app_key, vendor, channel, f)))
                if len(answered) >= _RECORD_BATCH:
                    await settle()

        workers = min(len(todo), self._in_flight.get((app_key, vendor), _IN_FLIGHT))
        await asyncio.gather(*(worker() for _ in range(workers)))
        if answered:
            await settle()
        return retry, wait

    async def _send(self, app_key: str, vendor: str, channel: Channel, f: Forward) -> Outcome:
        await self._limits[(app_key, vendor)].wait()
        started = time.perf_counter()
        outcome: Outcome
        try:
            outcome = await channel.send(f.message, f.token)
        except PayloadTooLargeForVendor as exc:
            outcome = Fail(f"payload too large: {exc}")
        except Exception as exc:  # a channel bug must not lose the outcome
            log.exception(
                "channel %s failed msg_id=%s", vendor, f.message.msg_id, extra={"msg_id": f.message.msg_id}
            )
            outcome = Retry(reason=f"channel error: {exc!r}")
        self.stats.observe(vendor, outcome, time.perf_counter() - started)
        return outcome

    async def _record(
        self,
        app_key: str,
        vendor: str,
        outcomes: list[tuple[Forward, str, str | None]],
        attempts: int,
        on_failure: OnFailure | None,
    ) -> None:
        """Store outcomes reached after ``attempts`` sends each; failures go to ``on_failure`` if given."""
        if not outcomes:
            return
        fallback = on_failure is not None
        rows = [
            VendorOutcome(f.message.msg_id, f.device_id, kind, detail, f.token, attempts, fallback)
            for f, kind, detail in outcomes
        ]
        to_inbox = await self._store.run(self._store.vendors.record_vendor_outcomes, app_key, vendor, rows)
        if to_inbox and on_failure is not None:
            by_key = {(f.message.msg_id, f.device_id): f for f, _, _ in outcomes}
            await on_failure([(by_key[(o.msg_id, o.device_id)], f"{vendor}: {o.detail}") for o in to_inbox])


# --- the channel modules, by vendor name -------------------------------------------------------

_CHANNEL_CLASSES = {
    "apns": "ApnsChannel",
    "fcm": "FcmChannel",
    "hms": "HmsChannel",
    "mipush": "MiPushChannel",
    "webpush": "WebPushChannel",
}


def _module(vendor: str) -> Any:
    if vendor not in _CHANNEL_CLASSES:
        raise InvalidContent(
            f"unknown vendor {vendor!r}; known: {', '.join(_CHANNEL_CLASSES)}", code="bad_vendor_config"
        )
    return importlib.import_module(f"bridge.channels.{vendor}")


def _gateway_settings(vendor: str, obj: Any) -> dict[str, float]:
    """The entry's gateway keys (``rate_per_second``, ``max_in_flight``, ``connections``), checked."""
    if not isinstance(obj, dict):
        return {}
    settings: dict[str, float] = {}
    for key in GATEWAY_KEYS & set(obj):
        value = obj[key]
        whole = key != "rate_per_second"
        if isinstance(value, bool) or not isinstance(value, int if whole else int | float) or value <= 0:
            kind = "a positive whole number" if whole else "a positive number"
            raise InvalidContent(
                f"VENDORS.json {vendor}: {key!r} must be {kind}, got {value!r}", code="bad_vendor_config"
            )
        if key == "connections" and value > _MAX_CONNECTIONS:
            raise InvalidContent(
                f"VENDORS.json {vendor}: 'connections' is at most {_MAX_CONNECTIONS}, got {value}",
                code="bad_vendor_config",
            )
        settings[key] = value
    return settings


def _credentials(vendor: str, config: dict[str, Any]) -> Any:
    module = _module(vendor)
    obj, base_dir = config["obj"], Path(config["base_dir"])
    _gateway_settings(vendor, obj)
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k not in GATEWAY_KEYS}
    if vendor == "webpush":
        return module.load_credentials(obj, base_dir, vapid_private_key=config.get("vapid_private_pem") or "")
    return module.load_credentials(obj, base_dir)


def vendor_credentials(vendor: str, config: dict[str, Any]) -> Any:
    """Load stored credentials as a channel would (files read, keys parsed), without opening one:
    ``mqttpush doctor``'s check. Raises :class:`InvalidContent` (``bad_vendor_config``)."""
    return _credentials(vendor, config)


def check_vendor_config(
    vendor: str, obj: Any, base_dir: Path, existing: dict[str, Any] | None
) -> dict[str, Any]:
    """Validate one VENDORS.json entry (raises 422 ``bad_vendor_config``) and return what to store:
    the entry as given, where its relative paths are, and an existing VAPID key pair."""
    if vendor == "webpush":
        existing = existing or {}
        if not existing.get("vapid_private_pem"):
            private_pem, public_key = _module("webpush").generate_vapid_keys()
            existing = existing | {"vapid_private_pem": private_pem, "vapid_public_key": public_key}
    config = {"obj": obj, "base_dir": str(base_dir)}
    if vendor == "webpush":
        config |= {
            k: existing[k] for k in ("vapid_private_pem", "vapid_public_key") if existing and k in existing
        }
    _credentials(vendor, config)
    return config


def ensure_vapid(store: Store, app_key: str) -> str:
    """The app's VAPID public key, creating the key pair (and a default webpush entry) if missing."""
    config = store.vendors.vendor_config(app_key, "webpush")
    if config and config.get("vapid_public_key"):
        return str(config["vapid_public_key"])
    obj = (config or {}).get("obj") or {"subject": "mailto:push@localhost"}
    config = check_vendor_config("webpush", obj, Path((config or {}).get("base_dir") or "."), config)
    store.vendors.put_vendor_config(app_key, "webpush", config)
    return str(config["vapid_public_key"])


def make_channel(vendor: str, config: dict[str, Any]) -> Channel:
    """Open a channel from stored credentials (the gateway's factory)."""
    settings = _gateway_settings(vendor, config["obj"])
    options: dict[str, int] = {"max_concurrency": int(settings.get("max_in_flight", _IN_FLIGHT))}
    if vendor == "apns":
        options["connections"] = int(settings.get("connections", 1))
    channel: Channel = getattr(_module(vendor), _CHANNEL_CLASSES[vendor])(
        _credentials(vendor, config), **options
    )
    return channel
