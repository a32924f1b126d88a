"""Long-running processes: ``serve`` (all in one), ``broker``, ``bridge``.

The server classes are imported inside each command: nothing else in the CLI needs the
composition root, and ``mqttpush app list`` should not pay for starting imports of amqtt.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mqttpush import __version__
from mqttpush.cli import logs
from mqttpush.cli.shell import config_option, data_dir_option, emit, fail, json_option, store_url
from mqttpush.config import ServerConfig
from mqttpush.errors import MqttPushError

host_option = click.option("--host", default=ServerConfig.host, show_default=True, envvar="MQTTPUSH_HOST")
mqtt_port_option = click.option(
    "--mqtt-port",
    type=click.IntRange(0, 65535),
    default=ServerConfig.mqtt_port,
    show_default=True,
    envvar="MQTTPUSH_MQTT_PORT",
)
http_port_option = click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=ServerConfig.http_port,
    show_default=True,
    envvar="MQTTPUSH_HTTP_PORT",
)


def listener_options(f: Callable[..., Any]) -> Callable[..., Any]:
    port = click.IntRange(0, 65535)
    for name, help_text in (
        ("wss-port", "MQTT over WebSocket over TLS on this port (needs --tls-cert and --tls-key)."),
        ("mqtts-port", "MQTT over TLS on this port (needs --tls-cert and --tls-key)."),
        ("ws-port", "MQTT over WebSocket on this port (browsers, MQTT.js); off by default."),
    ):
        envvar = "MQTTPUSH_" + name.upper().replace("-", "_")
        f = click.option(f"--{name}", type=port, default=None, envvar=envvar, help=help_text)(f)
    for name, help_text in (
        ("tls-key", "PEM private key for the TLS listeners."),
        ("tls-cert", "PEM certificate chain for the TLS listeners."),
    ):
        envvar = "MQTTPUSH_" + name.upper().replace("-", "_")
        f = click.option(
            f"--{name}",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            envvar=envvar,
            help=help_text,
        )(f)
    return f


_OptionSpec = tuple[str, click.FloatRange | click.IntRange | click.Choice[str], str]


def _config_options(specs: tuple[_OptionSpec, ...], f: Callable[..., Any]) -> Callable[..., Any]:
    """One flag per ServerConfig field named in ``specs`` (``--name`` ↔ ``name``, with its
    default and its ``MQTTPUSH_NAME`` variable), in the order given."""
    for name, kind, help_text in reversed(specs):
        field = name.replace("-", "_")
        f = click.option(
            f"--{name}",
            type=kind,
            default=getattr(ServerConfig, field),
            show_default=True,
            envvar="MQTTPUSH_" + field.upper(),
            help=help_text,
        )(f)
    return f


_LOGS: tuple[_OptionSpec, ...] = (
    ("log-level", click.Choice(["debug", "info", "warning", "error"]), "Least severe log records written."),
    (
        "log-format",
        click.Choice(["text", "json"]),
        "Logs on stderr: text lines, or one JSON object a line with time, level, logger, message"
        " and msg_id/device_id/task_id/app_key where known (docs/operations.md).",
    ),
)


def log_level_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--log-level`` and ``--log-format`` (mqttpush/cli/logs.py)."""
    return _config_options(_LOGS, f)


def metrics_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--metrics-token",
        default=None,
        envvar="MQTTPUSH_METRICS_TOKEN",
        help="GET /metrics then wants 'Authorization: Bearer <token>' (default: open; prefer the"
        " variable to the flag, which other users can see in the process list).",
    )(f)


_MQTT_LIMITS: tuple[_OptionSpec, ...] = (
    (
        "mqtt-max-connections",
        click.IntRange(1),
        "MQTT connections open at once; more are closed before CONNECT.",
    ),
    (
        "mqtt-max-connections-per-ip",
        click.IntRange(1),
        "MQTT connections open at once from one IP; more are closed before CONNECT.",
    ),
    (
        "login-failures",
        click.IntRange(1),
        "Failed MQTT logins from one IP before its new connections are closed unread (back-off).",
    ),
    (
        "login-window",
        click.FloatRange(0),
        "Failed logins count towards --login-failures while each comes within this many seconds of the last.",
    ),
    (
        "login-backoff",
        click.FloatRange(0),
        "First block of an IP after --login-failures failed logins (s); doubles with each further failure.",
    ),
    (
        "login-backoff-max",
        click.FloatRange(0),
        "Longest block of an IP after failed MQTT logins (s).",
    ),
    (
        "refusal-log-interval",
        click.FloatRange(0.1),
        "Log refused MQTT connections as one summary line at most this often (s).",
    ),
)


def mqtt_limit_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The broker's connection caps and failed-login back-off (docs/security.md)."""
    return _config_options(_MQTT_LIMITS, f)


def _config(options: dict[str, Any]) -> ServerConfig:
    """The command's flags (named as ServerConfig fields) as a config; TLS listeners need both
    the certificate and the key."""
    cert, key = options.get("tls_cert"), options.get("tls_key")
    if (cert is None) != (key is None):
        raise click.BadParameter("give both --tls-cert and --tls-key", param_hint="--tls-cert/--tls-key")
    for flag, name in (("--mqtts-port", "mqtts_port"), ("--wss-port", "wss_port")):
        if options.get(name) is not None and cert is None:
            raise click.BadParameter("needs --tls-cert and --tls-key", param_hint=flag)
    public = options.get("public_url")
    if public is not None and not re.fullmatch(r"https?://[^/?#\s]+/?", public):
        raise click.BadParameter("must be http(s)://HOST[:PORT], no path", param_hint="--public-url")
    url = store_url()
    if url is not None:
        from mqttpush.store.postgres import is_postgres_url
        from mqttpush.store.store import sqlite_dir

        options = {**options, "store": url}
        if not is_postgres_url(url):
            options["data_dir"] = sqlite_dir(url)
    return ServerConfig(**options)


_HTTP_LIMITS: tuple[_OptionSpec, ...] = (
    (
        "api-rate",
        click.FloatRange(0),
        "Requests a second per app (signed or device-token routes); over it 429 rate_limited with Retry-After; 0: no limit.",
    ),
    ("api-burst", click.IntRange(1), "Requests an app may make at once above --api-rate."),
    (
        "ip-rate",
        click.FloatRange(0),
        "Requests a second per client IP to routes without a signature or token (device registration, the VAPID key); 0: no limit.",
    ),
    ("ip-burst", click.IntRange(1), "Requests a client IP may make at once above --ip-rate."),
    (
        "push-rate",
        click.FloatRange(0),
        "Pushes a second to one Web Push / UnifiedPush endpoint (POST /up/...); over it 429 rate_limited; 0: no limit.",
    ),
    ("push-burst", click.IntRange(1), "Pushes an endpoint may take at once above --push-rate."),
    (
        "http-header-timeout",
        click.FloatRange(0, min_open=True),
        "Seconds a client has to send a request's headers (and the longest a body may stall); then 408 and the connection is closed.",
    ),
    ("http-keepalive-timeout", click.IntRange(1), "Seconds an idle keep-alive HTTP connection stays open."),
    (
        "http-max-connections",
        click.IntRange(1),
        "HTTP connections open at once; beyond, 503 too_many_connections.",
    ),
    (
        "http-max-header-bytes",
        click.IntRange(1024),
        "Request line and headers, in bytes; above, 431 headers_too_large.",
    ),
)


def http_limit_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Rate limits and HTTP connection limits (docs/api.md, "Limits"), for serve and bridge."""
    return _config_options(_HTTP_LIMITS, f)


_STATS: tuple[_OptionSpec, ...] = (
    (
        "stats-flush-interval",
        click.FloatRange(0.1),
        "Seconds between writes of the statistics counted in memory (at most what a crash loses).",
    ),
    ("stats-minute-days", click.FloatRange(0), "Days per-minute statistics are kept; 0: forever."),
    ("stats-hour-days", click.FloatRange(0), "Days per-hour statistics are kept; 0: forever."),
    ("stats-day-days", click.FloatRange(0), "Days per-day statistics are kept; 0: forever."),
)


def stats_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Delivery statistics (docs/statistics.md): on or off, flush cadence, retention."""
    f = _config_options(_STATS, f)
    return click.option(
        "--stats/--no-stats",
        default=ServerConfig.stats,
        show_default=True,
        envvar="MQTTPUSH_STATS",
        help="Count delivery statistics (GET /api/v1/stats, mqttpush stats).",
    )(f)


def bridge_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = stats_options(f)
    f = http_limit_options(f)
    f = click.option(
        "--lease-seconds",
        type=click.FloatRange(0.5),
        default=ServerConfig.lease_seconds,
        show_default=True,
        envvar="MQTTPUSH_LEASE_SECONDS",
        help="How long a bridge's lease on its work lasts unrenewed: how soon another bridge over"
        " the same store takes over the work of one that died (docs/scale-out.md).",
    )(f)
    f = click.option(
        "--max-publish-lag",
        type=click.FloatRange(0),
        default=ServerConfig.max_publish_lag,
        show_default=True,
        envvar="MQTTPUSH_MAX_PUBLISH_LAG",
        help="Refuse new pushes (503 overloaded, Retry-After) while accepted ones wait longer"
        " than this many seconds to be published; 0: no bound.",
    )(f)
    f = click.option(
        "--max-envelope-bytes",
        type=click.IntRange(256, 1 << 20),
        default=ServerConfig.max_envelope_bytes,
        show_default=True,
        envvar="MQTTPUSH_MAX_ENVELOPE_BYTES",
    )(f)
    f = click.option(
        "--public-url",
        default=None,
        envvar="MQTTPUSH_PUBLIC_URL",
        help="Scheme and host of push endpoint URLs given to devices, e.g. https://push.example.com"
        " (default: those the request came to).",
    )(f)
    return click.option(
        "--public-mqtt-url",
        default=None,
        envvar="MQTTPUSH_PUBLIC_MQTT_URL",
        help="MQTT URL given to devices (default: mqtt://<request host>:<mqtt port>).",
    )(f)


def _cluster(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    from mqttpush.cluster.wire import parse_servers

    if value is not None:
        try:
            parse_servers(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--cluster") from None
    return value


def _node_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    from mqttpush.cluster.wire import valid_node_id

    if value is not None and not valid_node_id(value):
        raise click.BadParameter("1-64 of A-Z a-z 0-9 _ . -", param_hint="--node-id")
    return value


cluster_option = click.option(
    "--cluster",
    callback=_cluster,
    default=None,
    envvar="MQTTPUSH_CLUSTER",
    help="nats://HOST:PORT[,nats://HOST:PORT...]: run as part of a cluster linked by NATS (docs/scale-out.md).",
)


def check_data_dir(
    data_dir: Path, roles: tuple[str, ...], shared: tuple[str, ...] = (), url: str | None = None
) -> Callable[[], None]:
    """The slow and blocking part of a server's start, done before it: the data dir's lock for
    ``roles`` (and ``shared`` roles, in a cluster) free, the store's file checked and migrated. A
    refusal is a :class:`MqttPushError` (docs/operations.md); the server then opens the store
    again, now at once, and takes the lock for good."""

    def check() -> None:
        from mqttpush.store import Store
        from mqttpush.store.lock import DataDirLock

        lock = DataDirLock(data_dir, roles, shared)
        try:
            Store(data_dir, url=url).close()
        finally:
            lock.release()

    return check


def _aside(work: Callable[[], None], loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    """Run ``work`` on a daemon thread, so that a signal meanwhile is heard and the process ends
    without waiting for it (a store waiting on another process's lock would hold up an
    executor's shutdown)."""
    done: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        outcome: tuple[bool, BaseException | None] = (True, None)
        try:
            work()
        except BaseException as exc:
            outcome = (False, exc)
        with contextlib.suppress(RuntimeError):  # the loop is gone: the process is ending
            loop.call_soon_threadsafe(_settle, done, *outcome)

    threading.Thread(target=run, name="mqttpush-start", daemon=True).start()
    return done


def _settle(done: asyncio.Future[None], ok: bool, value: Any) -> None:
    if done.done():
        return
    if ok:
        done.set_result(value)
    else:
        done.set_exception(value)


def _discard(checked: asyncio.Future[None]) -> None:
    """A check that ended after the stop signal came: the process is ending, nothing to report."""
    if not checked.cancelled():
        checked.exception()


def _run_until_signal(
    check: Callable[[], None],
    make: Callable[[], Any],
    ready: Callable[[Any], dict[str, Any]],
    human: Callable[[Any], str],
    as_json: bool,
    log_level: str,
    log_format: str = "text",
) -> None:
    """Start a server, print its ready line, serve until SIGINT/SIGTERM, stop cleanly."""
    import uvloop

    logs.configure(log_level, log_format)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        checking = _aside(check, loop)
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait((checking, stopping), return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not checking.done():
            checking.add_done_callback(_discard)
            return
        checking.result()
        async with make() as server:
            emit(ready(server) | {"event": "ready"}, as_json, lambda: click.echo(human(server)))
            sys.stdout.flush()
            await stop.wait()

    try:
        uvloop.run(run())
    except OSError as exc:
        fail(f"cannot start: {exc}")
    except MqttPushError as exc:
        fail(f"{exc.message} [{exc.code}]")


@click.command()
@config_option()
@data_dir_option
@host_option
@mqtt_port_option
@http_port_option
@listener_options
@mqtt_limit_options
@bridge_options
@metrics_option
@click.option(
    "--broker-process/--no-broker-process",
    default=None,
    envvar="MQTTPUSH_BROKER_PROCESS",
    help="Run the MQTT broker in a second process, so API + bridge and broker each have a core"
    " (default: on when the machine has more than one core).",
)
@log_level_option
@json_option
def serve(as_json: bool, **options: Any) -> None:
    """Run broker, bridge and HTTP API (embedded defaults; the broker in a second process on a
    machine with more than one core)."""
    from mqttpush.server import DualProcessServer, EmbeddedServer, broker_process_wanted

    config = _config(options)
    dual = broker_process_wanted(config)
    _run_until_signal(
        check_data_dir(config.data_dir, ("broker", "bridge"), url=config.store),
        lambda: DualProcessServer(config) if dual else EmbeddedServer(config),
        lambda s: {
            "mqtt_port": s.mqtt_port,
            **s.listener_ports(),
            "http_port": s.http_port,
            "http_url": s.http_url,
            "data_dir": str(config.data_dir),
        },
        lambda s: (
            f"mqttpush {__version__} serving mqtt://{config.host}:{s.mqtt_port} and {s.http_url}"
            f" (data in {config.data_dir}); Ctrl-C stops"
        ),
        as_json,
        config.log_level,
        config.log_format,
    )


@click.command()
@config_option()
@data_dir_option
@host_option
@mqtt_port_option
@listener_options
@mqtt_limit_options
@cluster_option
@click.option(
    "--node-id",
    callback=_node_id,
    default=None,
    envvar="MQTTPUSH_NODE_ID",
    help="With --cluster: this node's id, unique in the cluster, 1-64 of A-Z a-z 0-9 _ . - (default: host name).",
)
@log_level_option
@json_option
def broker(as_json: bool, **options: Any) -> None:
    """Run the broker alone (devices authenticate against the store in --data-dir); with --cluster,
    one broker node of a cluster (docs/scale-out.md)."""
    from mqttpush.server import BrokerServer, broker_locks

    if options.get("node_id") is not None and options.get("cluster") is None:
        raise click.BadParameter("only with --cluster", param_hint="--node-id")
    if options.get("cluster") is not None and options.get("node_id") is None:
        options["node_id"] = socket.gethostname()
    config = _config(options)
    cluster = {"cluster": config.cluster, "node_id": config.node_id} if config.cluster else {}
    _run_until_signal(
        check_data_dir(config.data_dir, *broker_locks(config), url=config.store),
        lambda: BrokerServer(config),
        lambda s: {
            "mqtt_port": s.mqtt_port,
            **s.node.listener_ports(),
            "data_dir": str(config.data_dir),
            **cluster,
        },
        lambda s: (
            f"mqttpush broker serving mqtt://{config.host}:{s.mqtt_port} (data in {config.data_dir});"
            " Ctrl-C stops"
        ),
        as_json,
        config.log_level,
        config.log_format,
    )


@click.command()
@config_option()
@click.option(
    "--broker",
    "broker_url",
    default=None,
    envvar="MQTTPUSH_BROKER_URL",
    help="mqtt://HOST:PORT of the broker (mqttpush broker, mosquitto, ...); or --cluster.",
)
@cluster_option
@data_dir_option
@host_option
@http_port_option
@bridge_options
@click.option(
    "--mosquitto-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    envvar="MQTTPUSH_MOSQUITTO_DIR",
    help="Keep mosquitto's password and ACL files here, in step with the store.",
)
@click.option(
    "--mosquitto-pid-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="MQTTPUSH_MOSQUITTO_PID_FILE",
    help="SIGHUP this mosquitto after rewriting its files.",
)
@metrics_option
@log_level_option
@json_option
def bridge(as_json: bool, **options: Any) -> None:
    """Run bridge, HTTP API and scheduler against an MQTT broker, as its privileged client; with
    --cluster, one bridge of a cluster, publishing through its broker nodes (docs/scale-out.md)."""
    from mqttpush.server import BridgeServer, bridge_locks

    if (options.get("broker_url") is None) == (options.get("cluster") is None):
        raise click.BadParameter("give either --broker or --cluster", param_hint="--broker/--cluster")
    config = _config(options)
    _run_until_signal(
        check_data_dir(config.data_dir, *bridge_locks(config), url=config.store),
        lambda: BridgeServer(config),
        lambda s: (
            {
                "http_port": s.http_port,
                "http_url": s.http_url,
                "broker": config.broker_url,
                "data_dir": str(config.data_dir),
            }
            | ({"cluster": config.cluster} if config.cluster else {})
        ),
        lambda s: (
            f"mqttpush bridge on {config.broker_url or config.cluster}, API at {s.http_url}; Ctrl-C stops"
        ),
        as_json,
        config.log_level,
        config.log_format,
    )
