"""What the HTTP API is built over: the store, the bridge's parts and the limits, handed to
``create_api`` and to every route module's ``install``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridge.distributor import Distributor
from bridge.intake import Intake
from bridge.publisher import Publisher
from bridge.tasks import TaskRunner
from mqttpush.api.limits import RateLimiter
from mqttpush.clock import Clock
from mqttpush.store import Store

if TYPE_CHECKING:
    from mqttpush.api.metrics import MetricSources


@dataclass
class ApiContext:
    store: Store
    intake: Intake
    tasks: TaskRunner
    clock: Clock
    mqtt_url: Callable[[str], str]
    """Given the host a request came to, the MQTT URL devices should use."""
    on_register: Callable[[], None] | None = None
    """Told after a device (re-)registers: a foreign broker's password file must follow."""
    publisher: Publisher | None = None
    """For recalls: the revoke envelope goes out at once."""
    not_ready: Callable[[], dict[str, str]] | None = None
    """Supervised loops waiting to be restarted (name -> cause), for ``GET /readyz``."""
    app_limiter: RateLimiter | None = None
    """Requests per app key on signed and device-token routes, after authentication (None: no limit)."""
    ip_limiter: RateLimiter | None = None
    """Requests per client IP on routes without a signature or token (None: no limit)."""
    metrics: MetricSources | None = None
    """What ``GET /metrics`` reads (None: only what the API counts itself)."""
    distributor: Distributor | None = None
    """Delivers what application servers push to endpoints (docs/webpush.md; None: no /up/ routes)."""
    endpoint_limiter: RateLimiter | None = None
    """Pushes per endpoint on ``POST /up/<endpoint_id>`` (None: no limit)."""
    public_url: str | None = None
    """Scheme and host of endpoint URLs (``https://push.example.com``); default: the request's own."""
