"""Server configuration: one dataclass, mirrored flag for flag by the CLI.

Resolution order (highest first): command-line flag, ``MQTTPUSH_*`` environment variable,
TOML file given with ``--config``, built-in default. The CLI does the resolving (click's
envvar + default_map); everything else receives a finished :class:`ServerConfig`.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mqttpush.errors import BadRequest


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path = Path("mqttpush-data")
    store: str | None = None
    """``--store``: ``postgresql://…`` for a store shared by many processes (docs/scale-out.md);
    None: SQLite in ``data_dir``. ``data_dir`` holds the master key and lock files either way."""
    host: str = "127.0.0.1"
    mqtt_port: int = 1883
    http_port: int = 8080
    ws_port: int | None = None
    """MQTT over WebSocket (browsers, MQTT.js), off unless set."""
    tls_cert: Path | None = None
    """PEM certificate chain for ``mqtts_port`` and ``wss_port``."""
    tls_key: Path | None = None
    mqtts_port: int | None = None
    """MQTT over TLS, off unless set (needs ``tls_cert`` and ``tls_key``)."""
    wss_port: int | None = None
    """MQTT over WebSocket over TLS, off unless set (needs ``tls_cert`` and ``tls_key``)."""
    public_mqtt_url: str | None = None
    """MQTT URL handed to devices at registration; default ``mqtt://<host the request came to>:<mqtt_port>``."""
    public_url: str | None = None
    """Scheme and host of the push endpoint URLs handed to devices (``https://push.example.com``,
    docs/webpush.md); default: those the request came to."""
    max_envelope_bytes: int = 4096
    default_ttl: int = 3 * 24 * 3600
    max_ttl: int = 10 * 24 * 3600
    connect_timeout: float = 10.0
    stats: bool = True
    """Count delivery statistics (docs/statistics.md); off, the push path runs without them."""
    stats_flush_interval: float = 5.0
    """Seconds between writes of the statistics counted in memory: at most what a crash loses."""
    stats_minute_days: float = 7
    """Days per-minute statistics are kept (0: forever); hours and days likewise below."""
    stats_hour_days: float = 90
    stats_day_days: float = 3 * 365
    # MQTT connection limits (docs/security.md)
    mqtt_max_connections: int = 100_000
    """MQTT connections open at once; a socket over it is closed before its CONNECT is read."""
    mqtt_max_connections_per_ip: int = 10_000
    """MQTT connections open at once from one IP; over it, closed before CONNECT is read."""
    login_failures: int = 20
    """Failed MQTT logins from one IP (each within ``login_window`` s of the last) before its
    new connections are closed unread for ``login_backoff`` s, doubling with each further failure."""
    login_window: float = 60.0
    login_backoff: float = 1.0
    login_backoff_max: float = 300.0
    refusal_log_interval: float = 10.0
    """Refused MQTT connections are logged as one summary line at most this often (seconds)."""
    expiry_interval: float = 5.0
    lease_seconds: float = 15.0
    """How long a bridge's lease on its work lasts unrenewed: how soon another bridge over the same
    store finishes the work of one that died (docs/scale-out.md, "Leases")."""
    max_publish_lag: float = 1.0
    """Seconds accepted pushes may wait to be published before new ones get 503 ``overloaded``
    with ``Retry-After`` (0: no bound)."""
    api_rate: float = 10_000.0
    """Requests a second each app may make (signed or device-token routes) before 429
    ``rate_limited`` with ``Retry-After`` (0: no limit)."""
    api_burst: int = 20_000
    """Requests an app may make at once above ``api_rate``."""
    ip_rate: float = 100.0
    """Requests a second each client IP may make to routes without a signature or token
    (device registration, the VAPID key) before 429 ``rate_limited`` (0: no limit)."""
    ip_burst: int = 1000
    """Requests a client IP may make at once above ``ip_rate``."""
    push_rate: float = 1.0
    """Pushes a second to one Web Push / UnifiedPush endpoint (60 a minute) before 429
    ``rate_limited`` with ``Retry-After`` (0: no limit)."""
    push_burst: int = 100
    """Pushes an endpoint may take at once above ``push_rate``."""
    http_header_timeout: float = 10.0
    """Seconds a client has to send a request's headers, and the longest a request body may
    stall, before 408 ``request_timeout`` closes its connection."""
    http_keepalive_timeout: int = 5
    """Seconds an idle keep-alive connection stays open."""
    http_max_connections: int = 10_000
    """HTTP connections open at once; one more gets 503 ``too_many_connections`` and is closed."""
    http_max_header_bytes: int = 64 * 1024
    """Request line and headers together, in bytes; above, 431 ``headers_too_large``."""
    broker_process: bool | None = None
    """``serve`` only: run the MQTT broker in a process of its own beside the one of the HTTP API,
    bridge and store, each on a core (mqttpush.cluster.pipe); None: when the machine has more than
    one core. Off, everything shares one process (and one core)."""
    log_level: str = "info"
    log_format: str = "text"
    """``text`` (one human line per record) or ``json`` (one JSON object a line, docs/operations.md)."""
    metrics_token: str | None = None
    """When set, ``GET /metrics`` wants ``Authorization: Bearer <metrics_token>`` (default: open)."""
    broker_url: str | None = None
    """``mqttpush bridge`` only: the MQTT broker to work against, ``mqtt://HOST:PORT``."""
    cluster: str | None = None
    """``mqttpush broker`` / ``bridge``: the NATS cluster linking broker nodes and bridges,
    ``nats://H:P[,nats://H:P…]`` (docs/scale-out.md, "Processes")."""
    node_id: str | None = None
    """``mqttpush broker --cluster`` only: this node's id, unique in the cluster (default: host name)."""
    mosquitto_dir: Path | None = None
    """``mqttpush bridge`` only: keep mosquitto's password and ACL files here, in step with the store."""
    mosquitto_pid_file: Path | None = None
    """``mqttpush bridge`` only: SIGHUP this mosquitto after rewriting its files."""


def option_names() -> set[str]:
    return {f.name for f in fields(ServerConfig)}


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; keys are the :class:`ServerConfig` field names (``-`` or ``_``)."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BadRequest(f"cannot read config {path}: {exc}", code="bad_config") from None
    table = raw.get("mqttpush", raw)
    out = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in option_names():
            raise BadRequest(f"unknown option {key!r} in {path}", code="bad_config")
        out[name] = value
    return out


def config_to_json(config: ServerConfig) -> str:
    """``config`` as JSON, for a process started with it (``serve``'s broker process)."""
    return json.dumps({f.name: _plain(getattr(config, f.name)) for f in fields(ServerConfig)})


def config_from_json(text: str) -> ServerConfig:
    """The :class:`ServerConfig` of :func:`config_to_json`."""
    doc: dict[str, Any] = json.loads(text)
    paths = {f.name for f in fields(ServerConfig) if "Path" in str(f.type)}
    values: dict[str, Any] = {k: Path(v) if k in paths and v is not None else v for k, v in doc.items()}
    return ServerConfig(**values)


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value
