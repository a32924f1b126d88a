"""``mqttpush``: a thin click shell over the library (DESIGN §7).

Every command that prints data takes ``--json`` and prints one JSON document. Errors go to
stderr with exit status 2, whatever their origin (bad flag, refused request, server down).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console

from mqttpush import __version__
from mqttpush.config import ServerConfig, load_toml
from mqttpush.errors import MqttPushError

AUTH_HELP = "also from MQTTPUSH_URL / MQTTPUSH_APP_KEY / MQTTPUSH_APP_SECRET"


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Translate library errors into the CLI's contract: a message on stderr and exit status 2."""
    try:
        yield
    except MqttPushError as exc:
        _fail(f"{exc.message} [{exc.code}]")


@contextlib.contextmanager
def _local_store(data_dir: Path, app_key: str | None = None, **options: Any) -> Iterator[Any]:
    """The store in ``data_dir`` for a local admin command (works beside a running server); with
    ``app_key``, refuse an unknown app. Errors follow the CLI contract (message, exit status 2)."""
    from mqttpush.store import Store

    with _errors():
        store = Store(data_dir, **options)
        try:
            if app_key is not None and store.get_app(app_key) is None:
                _fail(f"unknown app key {app_key} [unknown_app]")
            yield store
        finally:
            store.close()


def _emit(doc: Any, as_json: bool, human: Callable[[], None] | None = None) -> None:
    if as_json or human is None:
        click.echo(json.dumps(doc))
    else:
        human()


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value:
        try:
            ctx.default_map = {**(ctx.default_map or {}), **load_toml(value)}
        except MqttPushError as exc:
            raise click.BadParameter(exc.message, param_hint="--config") from None
    return value


def _data_dir_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=ServerConfig.data_dir,
        show_default=True,
        envvar="MQTTPUSH_DATA_DIR",
        help="Directory of the SQLite store.",
    )(f)


def _auth_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--app-secret", envvar="MQTTPUSH_APP_SECRET", required=True, help=AUTH_HELP)(f)
    f = click.option("--app-key", envvar="MQTTPUSH_APP_KEY", required=True, help=AUTH_HELP)(f)
    return click.option(
        "--url", envvar="MQTTPUSH_URL", required=True, help="Server URL, e.g. http://127.0.0.1:8080"
    )(f)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mqttpush")
def main() -> None:
    """mqttpush: self-hosted push notifications over MQTT."""


# --- serve, broker, bridge -------------------------------------------------------------------------

_config_option = click.option(
    "--config",
    type=click.Path(dir_okay=False),
    callback=_load_config,
    is_eager=True,
    expose_value=False,
    envvar="MQTTPUSH_CONFIG",
    help="TOML file with the options below.",
)
_host_option = click.option("--host", default=ServerConfig.host, show_default=True, envvar="MQTTPUSH_HOST")
_mqtt_port_option = click.option(
    "--mqtt-port",
    type=click.IntRange(0, 65535),
    default=ServerConfig.mqtt_port,
    show_default=True,
    envvar="MQTTPUSH_MQTT_PORT",
)
_http_port_option = click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=ServerConfig.http_port,
    show_default=True,
    envvar="MQTTPUSH_HTTP_PORT",
)
_log_level_option = click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    envvar="MQTTPUSH_LOG_LEVEL",
)


def _listener_options(f: Callable[..., Any]) -> Callable[..., Any]:
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


def _listeners(
    ws_port: int | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    mqtts_port: int | None,
    wss_port: int | None,
) -> dict[str, Any]:
    """The listener fields of ServerConfig, checked: a TLS port needs both the certificate and key."""
    if (tls_cert is None) != (tls_key is None):
        raise click.BadParameter("give both --tls-cert and --tls-key", param_hint="--tls-cert/--tls-key")
    for flag, value in (("--mqtts-port", mqtts_port), ("--wss-port", wss_port)):
        if value is not None and tls_cert is None:
            raise click.BadParameter("needs --tls-cert and --tls-key", param_hint=flag)
    return {
        "ws_port": ws_port,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "mqtts_port": mqtts_port,
        "wss_port": wss_port,
    }


def _bridge_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--max-envelope-bytes",
        type=click.IntRange(256, 1 << 20),
        default=ServerConfig.max_envelope_bytes,
        show_default=True,
        envvar="MQTTPUSH_MAX_ENVELOPE_BYTES",
    )(f)
    return click.option(
        "--public-mqtt-url",
        default=None,
        envvar="MQTTPUSH_PUBLIC_MQTT_URL",
        help="MQTT URL given to devices (default: mqtt://<request host>:<mqtt port>).",
    )(f)


def _run_until_signal(
    make: Callable[[], Any],
    ready: Callable[[Any], dict[str, Any]],
    human: Callable[[Any], str],
    as_json: bool,
    log_level: str,
) -> None:
    """Start a server, print its ready line, serve until SIGINT/SIGTERM, stop cleanly."""
    import uvloop

    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with make() as server:
            _emit(ready(server) | {"event": "ready"}, as_json, lambda: click.echo(human(server)))
            sys.stdout.flush()
            await stop.wait()

    try:
        uvloop.run(run())
    except OSError as exc:
        _fail(f"cannot start: {exc}")
    except MqttPushError as exc:
        _fail(f"{exc.message} [{exc.code}]")


@main.command()
@_config_option
@_data_dir_option
@_host_option
@_mqtt_port_option
@_http_port_option
@_listener_options
@_bridge_options
@_log_level_option
@json_option
def serve(
    data_dir: Path,
    host: str,
    mqtt_port: int,
    http_port: int,
    public_mqtt_url: str | None,
    max_envelope_bytes: int,
    log_level: str,
    as_json: bool,
    **listeners: Any,
) -> None:
    """Run broker, bridge and HTTP API in one process (embedded defaults)."""
    from mqttpush.server import EmbeddedServer

    config = ServerConfig(
        data_dir=data_dir,
        host=host,
        mqtt_port=mqtt_port,
        http_port=http_port,
        public_mqtt_url=public_mqtt_url,
        max_envelope_bytes=max_envelope_bytes,
        log_level=log_level,
        **_listeners(**listeners),
    )
    _run_until_signal(
        lambda: EmbeddedServer(config),
        lambda s: {
            "mqtt_port": s.mqtt_port,
            **s.broker_node.listener_ports(),
            "http_port": s.http_port,
            "http_url": s.http_url,
            "data_dir": str(data_dir),
        },
        lambda s: (
            f"mqttpush {__version__} serving mqtt://{host}:{s.mqtt_port} and {s.http_url}"
            f" (data in {data_dir}); Ctrl-C stops"
        ),
        as_json,
        log_level,
    )


@main.command()
@_config_option
@_data_dir_option
@_host_option
@_mqtt_port_option
@_listener_options
@_log_level_option
@json_option
def broker(
    data_dir: Path, host: str, mqtt_port: int, log_level: str, as_json: bool, **listeners: Any
) -> None:
    """Run the broker alone (devices authenticate against the store in --data-dir)."""
    from mqttpush.server import BrokerServer

    config = ServerConfig(
        data_dir=data_dir, host=host, mqtt_port=mqtt_port, log_level=log_level, **_listeners(**listeners)
    )
    _run_until_signal(
        lambda: BrokerServer(config),
        lambda s: {"mqtt_port": s.mqtt_port, **s.node.listener_ports(), "data_dir": str(data_dir)},
        lambda s: f"mqttpush broker serving mqtt://{host}:{s.mqtt_port} (data in {data_dir}); Ctrl-C stops",
        as_json,
        log_level,
    )


@main.command()
@_config_option
@click.option(
    "--broker",
    "broker_url",
    required=True,
    envvar="MQTTPUSH_BROKER_URL",
    help="mqtt://HOST:PORT of the broker (mqttpush broker, mosquitto, ...).",
)
@_data_dir_option
@_host_option
@_http_port_option
@_bridge_options
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
@_log_level_option
@json_option
def bridge(
    broker_url: str,
    data_dir: Path,
    host: str,
    http_port: int,
    public_mqtt_url: str | None,
    max_envelope_bytes: int,
    mosquitto_dir: Path | None,
    mosquitto_pid_file: Path | None,
    log_level: str,
    as_json: bool,
) -> None:
    """Run bridge, HTTP API and scheduler against an MQTT broker, as its privileged client."""
    from mqttpush.server import BridgeServer

    config = ServerConfig(
        data_dir=data_dir,
        host=host,
        http_port=http_port,
        public_mqtt_url=public_mqtt_url,
        max_envelope_bytes=max_envelope_bytes,
        log_level=log_level,
        broker_url=broker_url,
        mosquitto_dir=mosquitto_dir,
        mosquitto_pid_file=mosquitto_pid_file,
    )
    _run_until_signal(
        lambda: BridgeServer(config),
        lambda s: {
            "http_port": s.http_port,
            "http_url": s.http_url,
            "broker": broker_url,
            "data_dir": str(data_dir),
        },
        lambda s: f"mqttpush bridge on {broker_url}, API at {s.http_url}; Ctrl-C stops",
        as_json,
        log_level,
    )


@main.command("mosquitto-config")
@_data_dir_option
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for mosquitto.conf, passwords and acl.",
)
@_host_option
@_mqtt_port_option
@click.option("--pid-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--user", default=None, help="User mosquitto runs as (when started as root).")
@json_option
def mosquitto_config(
    data_dir: Path,
    out: Path,
    host: str,
    mqtt_port: int,
    pid_file: Path | None,
    user: str | None,
    as_json: bool,
) -> None:
    """Write a mosquitto.conf with password and ACL files from the store (for `mqttpush bridge --broker`)."""
    from bridge.mosquitto import MosquittoSync, mosquitto_conf, write_atomically

    if mqtt_port == 0:
        raise click.BadParameter("mosquitto needs a fixed port", param_hint="--mqtt-port")
    with _local_store(data_dir) as store:
        sync = MosquittoSync(store, out, pid_file)
        devices = sync.write()
    with _errors():
        conf = out / "mosquitto.conf"
        write_atomically(
            conf,
            mosquitto_conf(
                host=host,
                port=mqtt_port,
                password_file=str(sync.password_path.resolve()),
                acl_file=str(sync.acl_path.resolve()),
                pid_file=str(pid_file.resolve()) if pid_file else None,
                user=user,
            ),
            mode=0o644,
        )
    doc = {
        "config": str(conf),
        "passwords": str(sync.password_path),
        "acl": str(sync.acl_path),
        "devices": devices,
    }
    _emit(doc, as_json, lambda: click.echo(f"wrote {conf} ({devices} devices); run: mosquitto -c {conf}"))


# --- app (local admin) ---------------------------------------------------------------------------


@main.group()
def app() -> None:
    """Apps: create and list (local admin, works while the server runs)."""


@app.command("create")
@click.argument("name")
@_data_dir_option
@json_option
def app_create(name: str, data_dir: Path, as_json: bool) -> None:
    """Create an app; prints its key and secret (the secret is shown here only)."""

    with _local_store(data_dir) as store:
        created = store.create_app(name)
    doc = {"app_key": created.app_key, "app_secret": created.secret}
    _emit(doc, as_json, lambda: click.echo(f"app_key:    {created.app_key}\napp_secret: {created.secret}"))


@app.command("list")
@_data_dir_option
@json_option
def app_list(data_dir: Path, as_json: bool) -> None:
    """List apps with their device counts."""

    with _local_store(data_dir) as store:
        apps = store.list_apps()

    def human() -> None:
        for a in apps:
            click.echo(f"{a['app_key']}  {a['name']}  devices={a['devices']}")

    _emit({"apps": apps}, as_json, human)


@app.group("vendor")
def app_vendor() -> None:
    """Vendor channel credentials of an app (local admin)."""


@app_vendor.command("set")
@click.argument("app_key")
@_data_dir_option
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="VENDORS.json: one optional object per vendor (apns, fcm, hms, mipush, webpush).",
)
@json_option
def app_vendor_set(app_key: str, data_dir: Path, config_file: Path, as_json: bool) -> None:
    """Check and store vendor credentials; secrets are sealed in the store and never printed."""
    from bridge.vendors import check_vendor_config

    raw = _json_arg(config_file.read_text(), "--config")
    if not isinstance(raw, dict) or not raw:
        raise click.BadParameter("must be a JSON object with one entry per vendor", param_hint="--config")
    with _local_store(data_dir, app_key) as store:
        stored = []
        for vendor, obj in raw.items():
            config = check_vendor_config(
                vendor, obj, config_file.parent.resolve(), store.vendor_config(app_key, vendor)
            )
            store.put_vendor_config(app_key, vendor, config)
            stored.append(vendor)
    _emit(
        {"app_key": app_key, "vendors": stored},
        as_json,
        lambda: click.echo("configured: " + " ".join(stored)),
    )


@app.command("vapid")
@click.argument("app_key")
@_data_dir_option
@json_option
def app_vapid(app_key: str, data_dir: Path, as_json: bool) -> None:
    """The app's VAPID public key for WebPush, generated on first use."""
    from bridge.vendors import ensure_vapid

    with _local_store(data_dir, app_key) as store:
        public_key = ensure_vapid(store, app_key)
    _emit({"public_key": public_key}, as_json, lambda: click.echo(public_key))


@main.command("service-credentials")
@_data_dir_option
@json_option
def service_credentials(data_dir: Path, as_json: bool) -> None:
    """The bridge's privileged MQTT identity (publish/subscribe under mqttpush/#)."""

    with _local_store(data_dir) as store:
        username, password = store.service_credentials()
    _emit(
        {"username": username, "password": password},
        as_json,
        lambda: click.echo(f"username: {username}\npassword: {password}"),
    )


# --- devices -------------------------------------------------------------------------------------


@main.group()
def device() -> None:
    """Devices: register, import, list, show, update, tag, alias, listen (a device simulator)."""


@device.command("register")
@click.option("--url", envvar="MQTTPUSH_URL", required=True)
@click.option("--app-key", envvar="MQTTPUSH_APP_KEY", required=True)
@click.option("--install-id", required=True, help="The device's own stable install id.")
@click.option("--platform", type=click.Choice(["android", "ios", "web", "iot"]), required=True)
@click.option("--app-version", default=None)
@click.option("--locale", default=None)
@json_option
def device_register(
    url: str,
    app_key: str,
    install_id: str,
    platform: str,
    app_version: str | None,
    locale: str | None,
    as_json: bool,
) -> None:
    """Register a device (idempotent per install id; a repeat rotates the token)."""
    from mqttpush.client import PushClient

    with _errors(), PushClient(url, app_key) as client:
        reg = client.register_device(install_id, platform, app_version=app_version, locale=locale)
    doc = {"device_id": reg["device_id"], "device_token": reg["device_token"]}
    _emit(
        doc,
        as_json,
        lambda: click.echo(f"device_id:    {doc['device_id']}\ndevice_token: {doc['device_token']}"),
    )


@device.command("show")
@click.argument("device_id")
@_auth_options
@json_option
def device_show(device_id: str, url: str, app_key: str, app_secret: str, as_json: bool) -> None:
    """A device's attributes, tags, aliases and presence."""
    from mqttpush.client import PushClient

    with _errors(), PushClient(url, app_key, app_secret) as client:
        doc = client.device(device_id)
    _emit(doc, as_json, lambda: click.echo("\n".join(f"{k}: {v}" for k, v in doc.items())))


@device.command("update")
@click.argument("device_id")
@_auth_options
@click.option("--test/--no-test", "is_test", default=None, help="Mark (or unmark) a test device.")
@click.option("--app-version", default=None)
@click.option("--channel", default=None)
@click.option("--locale", default=None)
@click.option("--timezone", default=None, help="IANA name, for quiet hours and daily caps (Europe/Berlin).")
@json_option
def device_update(
    device_id: str,
    url: str,
    app_key: str,
    app_secret: str,
    is_test: bool | None,
    app_version: str | None,
    channel: str | None,
    locale: str | None,
    timezone: str | None,
    as_json: bool,
) -> None:
    """Change a device's attributes (what filters and test pushes select on)."""
    from mqttpush.client import PushClient

    attrs = {
        k: v
        for k, v in (
            ("test", is_test),
            ("app_version", app_version),
            ("channel", channel),
            ("locale", locale),
            ("timezone", timezone),
        )
        if v is not None
    }
    if not attrs:
        raise click.UsageError(
            "nothing to change: give --test/--no-test, --app-version, --channel, --locale or --timezone"
        )
    with _errors(), PushClient(url, app_key, app_secret) as client:
        doc = client.update_device(device_id, **attrs)
    _emit(doc, as_json, lambda: click.echo(f"device {device_id} updated"))


@device.group("tag")
def device_tag() -> None:
    """Tags of a device."""


def _tag_command(action: str) -> None:
    @device_tag.command(action)
    @click.argument("device_id")
    @click.argument("tags", nargs=-1, required=True)
    @_auth_options
    @json_option
    def command(
        device_id: str, tags: tuple[str, ...], url: str, app_key: str, app_secret: str, as_json: bool
    ) -> None:
        from mqttpush.client import PushClient

        with _errors(), PushClient(url, app_key, app_secret) as client:
            now = client.update_tags(device_id, **{action: list(tags)})
        _emit({"device_id": device_id, "tags": now}, as_json, lambda: click.echo(" ".join(now)))

    command.__doc__ = f"{action.capitalize()} tags of a device; prints its tags after."


_tag_command("add")
_tag_command("remove")


@device.group("alias")
def device_alias() -> None:
    """Aliases (e.g. your user id) of a device."""


def _alias_command(action: str, doc: str) -> None:
    @device_alias.command(action, help=doc)
    @click.argument("device_id")
    @click.argument("alias")
    @click.option("--alias-type", default="user", show_default=True)
    @_auth_options
    @json_option
    def command(
        device_id: str, alias: str, alias_type: str, url: str, app_key: str, app_secret: str, as_json: bool
    ) -> None:
        from mqttpush.client import PushClient

        with _errors(), PushClient(url, app_key, app_secret) as client:
            if action == "remove":
                now = client.unbind_alias(device_id, alias, alias_type)
            else:
                now = client.bind_alias(device_id, alias, alias_type, mode=action)
        _emit(
            {"device_id": device_id, "aliases": now},
            as_json,
            lambda: click.echo(" ".join(f"{a['alias_type']}:{a['alias']}" for a in now)),
        )


_alias_command("set", "Bind ALIAS to this device only (replacing its alias of that type).")
_alias_command("add", "Bind ALIAS to this device too (one alias, several devices: phone and tablet).")
_alias_command("remove", "Unbind ALIAS from this device.")


@device.command("token")
@click.argument("device_id")
@click.option("--vendor", type=click.Choice(["apns", "fcm", "hms", "mipush", "webpush"]), required=True)
@click.option("--token", default=None, help="The vendor's device token (apns, fcm, hms, mipush).")
@click.option(
    "--subscription",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="webpush: a file with the browser's PushSubscription JSON.",
)
@_auth_options
@json_option
def device_token(
    device_id: str,
    vendor: str,
    token: str | None,
    subscription: Path | None,
    url: str,
    app_key: str,
    app_secret: str,
    as_json: bool,
) -> None:
    """Register a device's vendor token (or WebPush subscription) for pushes while it is not on MQTT."""
    from mqttpush.client import PushClient

    sub: dict[str, Any] | None = None
    if vendor == "webpush":
        if subscription is None:
            raise click.UsageError("--vendor webpush needs --subscription SUB.json")
        sub = _json_arg(subscription.read_text(), "--subscription")
        if not isinstance(sub, dict):
            raise click.BadParameter("must hold a JSON object", param_hint="--subscription")
    elif token is None:
        raise click.UsageError(f"--vendor {vendor} needs --token")
    with _errors(), PushClient(url, app_key, app_secret) as client:
        doc = client.set_vendor_token(device_id, vendor, token, sub)
    _emit(doc, as_json, lambda: click.echo(" ".join(t["vendor"] for t in doc["tokens"])))


@device.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_data_dir_option
@click.option("--app-key", envvar="MQTTPUSH_APP_KEY", required=True)
@json_option
def device_import(file: Path, data_dir: Path, app_key: str, as_json: bool) -> None:
    """Register many devices from JSON lines (install_id, platform, tags, alias, alias_type, app_version,
    locale, channel, test) — local admin, a fleet migrating in."""
    from bridge.mosquitto import password_hash
    from mqttpush.models import Platform

    rows = []
    for n, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if (
                not isinstance(row, dict)
                or not isinstance(row.get("install_id"), str)
                or not row["install_id"]
            ):
                raise ValueError("needs install_id")
            Platform(str(row.get("platform")))
        except ValueError as exc:
            raise click.BadParameter(f"line {n}: {exc}", param_hint="FILE") from None
        rows.append(row)
    with _local_store(data_dir, app_key, broker_hasher=password_hash) as store:
        devices = []
        for i in range(0, len(rows), 5000):
            devices += store.import_devices(app_key, rows[i : i + 5000])
    _emit(
        {"imported": len(devices), "devices": devices},
        as_json,
        lambda: click.echo(f"imported {len(devices)} devices"),
    )


@device.command("list")
@_data_dir_option
@click.option("--app-key", envvar="MQTTPUSH_APP_KEY", required=True)
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True)
@json_option
def device_list(data_dir: Path, app_key: str, limit: int, as_json: bool) -> None:
    """List an app's devices (local admin)."""

    with _local_store(data_dir) as store:
        devices = store.list_devices(app_key, limit)
    docs = [
        {
            "device_id": d.device_id,
            "install_id": d.install_id,
            "platform": d.platform,
            "app_version": d.app_version,
            "online": d.online,
            "last_seen": d.last_seen,
        }
        for d in devices
    ]
    _emit(
        {"devices": docs},
        as_json,
        lambda: click.echo(
            "\n".join(
                f"{d['device_id']}  {d['platform']:<8} {'online' if d['online'] else 'offline'}" for d in docs
            )
        ),
    )


@device.command("listen")
@click.option("--url", envvar="MQTTPUSH_URL", required=True)
@click.option("--device-id", envvar="MQTTPUSH_DEVICE_ID", required=True)
@click.option("--device-token", envvar="MQTTPUSH_DEVICE_TOKEN", required=True)
@click.option("--count", type=click.IntRange(1), default=None, help="Exit after this many messages.")
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Exit (status 1) if --count messages have not arrived within this many seconds.",
)
@click.option("--opened", is_flag=True, help="Also send an 'opened' receipt for each message.")
@json_option
def device_listen(
    url: str,
    device_id: str,
    device_token: str,
    count: int | None,
    timeout: float | None,
    opened: bool,
    as_json: bool,
) -> None:
    """Act as a device: print each message and acknowledge it (arrived receipt)."""
    from mqttpush.device import DeviceClient

    done = threading.Event()
    received = 0

    def on_message(env: dict[str, Any]) -> None:
        nonlocal received
        received += 1
        if as_json:
            click.echo(json.dumps(env))
        else:
            text = " — ".join(p for p in (env.get("title"), env.get("body")) if p)
            data = f" data={json.dumps(env['data'])}" if env.get("data") else ""
            click.echo(f"[{env['id']}] {text}{data}")
        sys.stdout.flush()
        if opened:
            client.opened(env["id"])
        if count is not None and received >= count:
            done.set()

    with _errors():
        client = DeviceClient.from_server(url, device_id, device_token, on_message=on_message)
        client.connect()
    if not as_json:
        click.echo(f"device {device_id} listening on {client.app_key} (Ctrl-C stops)", err=True)
    try:
        finished = done.wait(timeout) if timeout is not None or count is not None else done.wait()
    except KeyboardInterrupt:
        finished = True
    client.disconnect()
    if not finished:
        click.echo(f"error: {received} of {count} messages within {timeout}s", err=True)
        sys.exit(1)


# --- push and status -----------------------------------------------------------------------------


def _json_arg(value: str | None, flag: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=flag) from None


_FILTER_RE = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|!=|==|=|>|<)\s*(.+?)\s*$")


def _filter_dict(items: tuple[str, ...]) -> dict[str, Any]:
    """``--filter platform=android,ios --filter 'app_version>=2.1' --filter test=true`` → target filter."""
    out: dict[str, Any] = {}
    for item in items:
        m = _FILTER_RE.match(item)
        if m is None:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (or app_version>=X)", param_hint="--filter")
        key, op, value = m.groups()
        if key == "app_version":
            out.setdefault("app_version", []).append(("" if op == "=" else op) + value)
        elif op != "=":
            raise click.BadParameter(f"only app_version takes {op}", param_hint="--filter")
        elif key in ("test", "online"):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise click.BadParameter(f"{key} must be true or false", param_hint="--filter")
            out[key] = value.lower() in ("true", "1", "yes")
        elif key == "last_seen_within":
            out[key] = value
        else:
            out[key] = value.split(",") if "," in value else value
    return out


def _vars(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--var")
        out[key] = value
    return out


def _batch_items(path: Path) -> list[dict[str, Any]]:
    """``--vars-file``: one JSON object a line: ``{"device": ID | "alias": A, "alias_type"?: T, "vars": {...}}``."""
    items = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise click.BadParameter(str(exc), param_hint="--vars-file") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"line {n}: {exc}", param_hint="--vars-file") from None
        if not isinstance(item, dict):
            raise click.BadParameter(f"line {n}: not a JSON object", param_hint="--vars-file")
        items.append(item)
    if not items:
        raise click.BadParameter("no items", param_hint="--vars-file")
    return items


def _wait_for_task(client: Any, task_id: str, show: bool) -> dict[str, Any]:
    """Poll a task until its audience is resolved and every delivery published (or it ends otherwise)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    def finished(t: dict[str, Any]) -> bool:
        settled = t["published"] + t["forwarded"] + t["failed"] + t["expired"] + t["cancelled"]
        return t["state"] in ("cancelled", "failed") or (t["state"] == "done" and settled >= t["targeted"])

    with Progress(
        TextColumn("task {task.fields[tid]} {task.fields[state]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("published"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not show,
    ) as bar:
        row = bar.add_task("task", total=None, tid=task_id, state="pending")
        while True:
            t: dict[str, Any] = client.task(task_id)
            bar.update(
                row, total=t["targeted"] or None, completed=t["published"] + t["forwarded"], state=t["state"]
            )
            if finished(t):
                return t
            time.sleep(0.2)


@main.command()
@_auth_options
@click.option("--device", "devices", multiple=True, help="Target device id (repeatable, at most 1000).")
@click.option("--alias", "aliases", multiple=True, help="Target alias (repeatable, at most 1000).")
@click.option(
    "--alias-type", default="user", show_default=True, help="Type of --alias (and of a --file of aliases)."
)
@click.option("--tag-expr", default=None, help="Tag expression, e.g. 'cs && !grad || staff'.")
@click.option(
    "--filter",
    "filters",
    multiple=True,
    help="KEY=VALUE over platform, channel, locale, last_seen_within, test, online; app_version>=X.",
)
@click.option(
    "--file",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Upload a file of device ids (or aliases with --file-kind aliases), one a line, and push to it.",
)
@click.option("--file-kind", type=click.Choice(["devices", "aliases"]), default="devices", show_default=True)
@click.option("--broadcast", is_flag=True, help="Every device of the app.")
@click.option("--title", default=None)
@click.option("--body", default=None)
@click.option("--data", default=None, help="JSON object delivered as the envelope's data.")
@click.option("--type", "kind", type=click.Choice(["notification", "message"]), default=None)
@click.option("--template", default=None, help="Name of a stored template (see `mqttpush template set`).")
@click.option("--var", "variables", multiple=True, help="Template variable NAME=VALUE (repeatable).")
@click.option(
    "--vars-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Batch: JSON lines {device|alias, alias_type?, vars}; each gets its own rendered message.",
)
@click.option(
    "--ttl", type=click.IntRange(1), default=None, help="Seconds the message may wait (default 3 days)."
)
@click.option("--biz-id", default=None, help="Idempotency key.")
@click.option("--priority", type=click.Choice(["high", "normal"]), default=None)
@click.option("--start-at", type=float, default=None, help="Unix seconds: send later.")
@click.option(
    "--policy",
    "policy_json",
    default=None,
    help='More policy as JSON, e.g. \'{"repush": {"after": 3600, "max": 2}}\' (docs/delivery.md).',
)
@click.option(
    "--strategy", type=click.Choice(["mqtt", "mqtt_else_vendor", "vendor_first", "vendor"]), default=None
)
@click.option("--production/--test", default=True, help="--test reaches only test devices.")
@click.option(
    "--wait", is_flag=True, help="For group sends: show progress until every delivery is published."
)
@json_option
def push(
    url: str,
    app_key: str,
    app_secret: str,
    devices: tuple[str, ...],
    aliases: tuple[str, ...],
    alias_type: str,
    tag_expr: str | None,
    filters: tuple[str, ...],
    file: Path | None,
    file_kind: str,
    broadcast: bool,
    title: str | None,
    body: str | None,
    data: str | None,
    kind: str | None,
    template: str | None,
    variables: tuple[str, ...],
    vars_file: Path | None,
    ttl: int | None,
    biz_id: str | None,
    priority: str | None,
    start_at: float | None,
    policy_json: str | None,
    strategy: str | None,
    production: bool,
    wait: bool,
    as_json: bool,
) -> None:
    """Send a push; prints its msg_id (device, alias) or task_id (tags, filter, file, broadcast)."""
    from mqttpush.client import PushClient

    chosen = [
        name
        for name, given in (
            ("--device", devices),
            ("--alias", aliases),
            ("--tag-expr/--filter", tag_expr is not None or filters),
            ("--file", file),
            ("--broadcast", broadcast),
            ("--vars-file", vars_file),
        )
        if given
    ]
    if len(chosen) != 1:
        raise click.UsageError(
            "give exactly one target: --device, --alias, --tag-expr/--filter, --file, "
            f"--broadcast or --vars-file (got {', '.join(chosen) or 'none'})"
        )
    data_obj = _json_arg(data, "--data")
    if data_obj is not None and not isinstance(data_obj, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--data")
    request: dict[str, Any] = {}
    if title is not None or body is not None:
        request["notification"] = {k: v for k, v in (("title", title), ("body", body)) if v is not None}
    if data_obj is not None:
        request["data"] = data_obj
    if kind:
        request["type"] = kind
    if template:
        request["template"] = template
    if variables:
        request["vars"] = _vars(variables)
    extra = _json_arg(policy_json, "--policy")
    if extra is not None and not isinstance(extra, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--policy")
    policy = (extra or {}) | {
        k: v
        for k, v in (
            ("ttl", ttl),
            ("biz_id", biz_id),
            ("strategy", strategy),
            ("priority", priority),
            ("start_at", start_at),
        )
        if v is not None
    }
    if not production:
        policy["production"] = False
    if policy:
        request["policy"] = policy
    with _errors(), PushClient(url, app_key, app_secret) as client:
        if vars_file is not None:
            result: dict[str, Any] = {
                "msg_ids": client.push_batch(request | {"items": _batch_items(vars_file)})
            }
            _emit(result, as_json, lambda: click.echo("\n".join(result["msg_ids"])))
            return
        if devices:
            request["target"] = {"devices": list(devices)}
        elif aliases:
            request["target"] = {"alias": list(aliases), "alias_type": alias_type}
        elif file is not None:
            uploaded = client.upload_file(file, file_kind, alias_type)
            request["target"] = {"file_id": uploaded["file_id"]}
        elif broadcast:
            request["target"] = {"broadcast": True}
        else:
            request["target"] = {
                k: v
                for k, v in (("tags", tag_expr), ("filter", _filter_dict(filters) or None))
                if v is not None
            }
        result = client.push(request)
        if wait and "task_id" in result:
            result = result | {"task": _wait_for_task(client, result["task_id"], show=not as_json)}
    _emit(result, as_json, lambda: click.echo(result.get("task_id") or result.get("msg_id")))


@main.group()
def task() -> None:
    """Group sends: progress and cancel."""


@task.command("status")
@click.argument("task_id")
@_auth_options
@json_option
def task_status(task_id: str, url: str, app_key: str, app_secret: str, as_json: bool) -> None:
    """Progress of a task: targeted, published, forwarded, arrived, opened, failed."""
    from mqttpush.client import PushClient

    with _errors(), PushClient(url, app_key, app_secret) as client:
        doc = client.task(task_id)
    _emit(doc, as_json, lambda: _print_task(doc))


@task.command("cancel")
@click.argument("task_id")
@_auth_options
@json_option
def task_cancel(task_id: str, url: str, app_key: str, app_secret: str, as_json: bool) -> None:
    """Stop a running task; deliveries not yet published become 'cancelled'."""
    from mqttpush.client import PushClient

    with _errors(), PushClient(url, app_key, app_secret) as client:
        doc = client.cancel_task(task_id)
    _emit(doc, as_json, lambda: _print_task(doc))


def _print_task(doc: dict[str, Any]) -> None:
    counts = "  ".join(
        f"{k}={doc[k]}" for k in ("targeted", "published", "forwarded", "arrived", "opened", "failed")
    )
    click.echo(f"task {doc['task_id']} {doc['state']}  {counts}")


@main.group()
def template() -> None:
    """Stored templates with {{var}} placeholders."""


@template.command("set")
@click.argument("name")
@_auth_options
@click.option("--title", default=None)
@click.option("--body", default=None)
@click.option("--data", default=None, help="JSON object; string values may hold {{var}} too.")
@click.option("--type", "kind", type=click.Choice(["notification", "message"]), default=None)
@json_option
def template_set(
    name: str,
    url: str,
    app_key: str,
    app_secret: str,
    title: str | None,
    body: str | None,
    data: str | None,
    kind: str | None,
    as_json: bool,
) -> None:
    """Create or replace a template."""
    from mqttpush.client import PushClient

    tmpl: dict[str, Any] = {}
    if title is not None or body is not None:
        tmpl["notification"] = {k: v for k, v in (("title", title), ("body", body)) if v is not None}
    data_obj = _json_arg(data, "--data")
    if data_obj is not None:
        tmpl["data"] = data_obj
    if kind:
        tmpl["type"] = kind
    with _errors(), PushClient(url, app_key, app_secret) as client:
        doc = client.put_template(name, tmpl)
    _emit(doc, as_json, lambda: click.echo(f"template {name} saved"))


@template.command("list")
@_auth_options
@json_option
def template_list(url: str, app_key: str, app_secret: str, as_json: bool) -> None:
    """List the app's templates."""
    from mqttpush.client import PushClient

    with _errors(), PushClient(url, app_key, app_secret) as client:
        docs = client.templates()
    _emit({"templates": docs}, as_json, lambda: click.echo("\n".join(d["name"] for d in docs)))


def _message_command(name: str, doc: str, call: Callable[[Any, str], dict[str, Any]]) -> None:
    @main.command(name, help=doc)
    @click.argument("msg_id")
    @_auth_options
    @json_option
    def command(msg_id: str, url: str, app_key: str, app_secret: str, as_json: bool) -> None:
        from mqttpush.client import PushClient

        with _errors(), PushClient(url, app_key, app_secret) as client:
            doc = call(client, msg_id)
        _emit(doc, as_json, lambda: click.echo(f"{msg_id}: {doc.get('state', doc)}"))


_message_command(
    "cancel",
    "Stop a message not yet (fully) sent: a draft, a scheduled send, a series, a running task.",
    lambda c, m: c.cancel(m),
)
_message_command(
    "recall",
    "Take a sent message back from devices that have not opened it (revoke).",
    lambda c, m: c.recall(m),
)


@main.command()
@click.argument("msg_id")
@click.option("--by", "approver", required=True, help="Who approves (kept with the message).")
@_auth_options
@json_option
def approve(msg_id: str, approver: str, url: str, app_key: str, app_secret: str, as_json: bool) -> None:
    """Approve a draft: it goes out at its start time (or now)."""
    from mqttpush.client import PushClient

    with _errors(), PushClient(url, app_key, app_secret) as client:
        doc = client.approve(msg_id, approver)
    _emit(doc, as_json, lambda: click.echo(f"{msg_id}: {doc['state']} by {doc['approved_by']}"))


@app.command("settings")
@_auth_options
@click.option("--require-approval/--no-require-approval", default=None, help="Every push starts as a draft.")
@click.option("--quiet-hours", default=None, help="HH:MM-HH:MM in each device's time zone; 'off' to clear.")
@click.option(
    "--daily-cap", type=click.IntRange(0), default=None, help="Pushes per device per local day; 0 = none."
)
@click.option("--over-cap", type=click.Choice(["hold", "drop"]), default=None)
@click.option("--inbox-limit", type=click.IntRange(1, 100_000), default=None)
@json_option
def app_settings(
    url: str,
    app_key: str,
    app_secret: str,
    require_approval: bool | None,
    quiet_hours: str | None,
    daily_cap: int | None,
    over_cap: str | None,
    inbox_limit: int | None,
    as_json: bool,
) -> None:
    """Show (no options) or change the app's delivery policy defaults."""
    from mqttpush.client import PushClient

    with _errors(), PushClient(url, app_key, app_secret) as client:
        settings = client.settings()
        changes: dict[str, Any] = {}
        if require_approval is not None:
            changes["require_approval"] = require_approval
        if quiet_hours is not None:
            if quiet_hours == "off":
                changes["quiet_hours"] = None
            else:
                start, sep, end = quiet_hours.partition("-")
                if not sep:
                    raise click.BadParameter("use HH:MM-HH:MM or off", param_hint="--quiet-hours")
                changes["quiet_hours"] = {"start": start, "end": end}
        if daily_cap is not None:
            changes["daily_cap"] = daily_cap or None
        if over_cap is not None:
            changes["over_cap"] = over_cap
        if inbox_limit is not None:
            changes["inbox_limit"] = inbox_limit
        if changes:
            settings = client.put_settings(settings | changes)
    _emit(settings, as_json, lambda: click.echo("\n".join(f"{k}: {v}" for k, v in settings.items())))


@main.command()
@click.argument("msg_ids", nargs=-1, required=True)
@_auth_options
@json_option
def status(msg_ids: tuple[str, ...], url: str, app_key: str, app_secret: str, as_json: bool) -> None:
    """Show each delivery of a message with its state history."""
    from mqttpush.client import PushClient

    with _errors(), PushClient(url, app_key, app_secret) as client:
        docs = [client.message(m) for m in msg_ids]

    def human() -> None:
        for doc in docs:
            click.echo(f"message {doc['msg_id']}")
            for d in doc["deliveries"]:
                trail = " → ".join(e["state"] for e in d["history"])
                click.echo(f"  {d['device_id']}  {d['state']:<10} via {d['channel']}  ({trail})")

    _emit(docs[0] if len(docs) == 1 else docs, as_json, human)
