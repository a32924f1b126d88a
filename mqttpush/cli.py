"""``mqttpush``: a thin click shell over the library (DESIGN §7).

Every command that prints data takes ``--json`` and prints one JSON document. Errors go to
stderr with exit status 2, whatever their origin (bad flag, refused request, server down).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

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


# --- serve ---------------------------------------------------------------------------------------


@main.command()
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    callback=_load_config,
    is_eager=True,
    expose_value=False,
    envvar="MQTTPUSH_CONFIG",
    help="TOML file with the options below.",
)
@_data_dir_option
@click.option("--host", default=ServerConfig.host, show_default=True, envvar="MQTTPUSH_HOST")
@click.option(
    "--mqtt-port",
    type=click.IntRange(0, 65535),
    default=ServerConfig.mqtt_port,
    show_default=True,
    envvar="MQTTPUSH_MQTT_PORT",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=ServerConfig.http_port,
    show_default=True,
    envvar="MQTTPUSH_HTTP_PORT",
)
@click.option(
    "--public-mqtt-url",
    default=None,
    envvar="MQTTPUSH_PUBLIC_MQTT_URL",
    help="MQTT URL given to devices (default: mqtt://<request host>:<mqtt port>).",
)
@click.option(
    "--max-envelope-bytes",
    type=click.IntRange(256, 1 << 20),
    default=ServerConfig.max_envelope_bytes,
    show_default=True,
    envvar="MQTTPUSH_MAX_ENVELOPE_BYTES",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    envvar="MQTTPUSH_LOG_LEVEL",
)
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
) -> None:
    """Run broker, bridge and HTTP API in one process (embedded defaults)."""
    import uvloop

    from mqttpush.server import EmbeddedServer

    config = ServerConfig(
        data_dir=data_dir,
        host=host,
        mqtt_port=mqtt_port,
        http_port=http_port,
        public_mqtt_url=public_mqtt_url,
        max_envelope_bytes=max_envelope_bytes,
        log_level=log_level,
    )
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
        async with EmbeddedServer(config) as server:
            ready = {
                "event": "ready",
                "mqtt_port": server.mqtt_port,
                "http_port": server.http_port,
                "http_url": server.http_url,
                "data_dir": str(data_dir),
            }
            _emit(
                ready,
                as_json,
                lambda: click.echo(
                    f"mqttpush {__version__} serving mqtt://{host}:{server.mqtt_port} and {server.http_url}"
                    f" (data in {data_dir}); Ctrl-C stops"
                ),
            )
            sys.stdout.flush()
            await stop.wait()

    try:
        uvloop.run(run())
    except OSError as exc:
        _fail(f"cannot start: {exc}")
    except MqttPushError as exc:
        _fail(f"{exc.message} [{exc.code}]")


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
    from mqttpush.store import Store

    with _errors():
        store = Store(data_dir)
        created = store.create_app(name)
        store.close()
    doc = {"app_key": created.app_key, "app_secret": created.secret}
    _emit(doc, as_json, lambda: click.echo(f"app_key:    {created.app_key}\napp_secret: {created.secret}"))


@app.command("list")
@_data_dir_option
@json_option
def app_list(data_dir: Path, as_json: bool) -> None:
    """List apps with their device counts."""
    from mqttpush.store import Store

    with _errors():
        store = Store(data_dir)
        apps = store.list_apps()
        store.close()

    def human() -> None:
        for a in apps:
            click.echo(f"{a['app_key']}  {a['name']}  devices={a['devices']}")

    _emit({"apps": apps}, as_json, human)


@main.command("service-credentials")
@_data_dir_option
@json_option
def service_credentials(data_dir: Path, as_json: bool) -> None:
    """The bridge's privileged MQTT identity (publish/subscribe under mqttpush/#)."""
    from mqttpush.store import Store

    with _errors():
        store = Store(data_dir)
        username, password = store.service_credentials()
        store.close()
    _emit(
        {"username": username, "password": password},
        as_json,
        lambda: click.echo(f"username: {username}\npassword: {password}"),
    )


# --- devices -------------------------------------------------------------------------------------


@main.group()
def device() -> None:
    """Devices: register, listen (a device simulator)."""


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


@main.command()
@_auth_options
@click.option("--device", "devices", multiple=True, help="Target device id (repeatable, at most 1000).")
@click.option("--title", default=None)
@click.option("--body", default=None)
@click.option("--data", default=None, help="JSON object delivered as the envelope's data.")
@click.option("--type", "kind", type=click.Choice(["notification", "message"]), default=None)
@click.option(
    "--ttl", type=click.IntRange(1), default=None, help="Seconds the message may wait (default 3 days)."
)
@click.option("--biz-id", default=None, help="Idempotency key.")
@click.option(
    "--strategy", type=click.Choice(["mqtt", "mqtt_else_vendor", "vendor_first", "vendor"]), default=None
)
@click.option("--production/--test", default=True, help="--test reaches only test devices.")
@json_option
def push(
    url: str,
    app_key: str,
    app_secret: str,
    devices: tuple[str, ...],
    title: str | None,
    body: str | None,
    data: str | None,
    kind: str | None,
    ttl: int | None,
    biz_id: str | None,
    strategy: str | None,
    production: bool,
    as_json: bool,
) -> None:
    """Send a push; prints its msg_id."""
    from mqttpush.client import PushClient

    if not devices:
        raise click.UsageError("a target is required: --device ID")
    data_obj = _json_arg(data, "--data")
    if data_obj is not None and not isinstance(data_obj, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--data")
    request: dict[str, Any] = {"target": {"devices": list(devices)}}
    if title is not None or body is not None:
        request["notification"] = {k: v for k, v in (("title", title), ("body", body)) if v is not None}
    if data_obj is not None:
        request["data"] = data_obj
    if kind:
        request["type"] = kind
    policy = {k: v for k, v in (("ttl", ttl), ("biz_id", biz_id), ("strategy", strategy)) if v is not None}
    if not production:
        policy["production"] = False
    if policy:
        request["policy"] = policy
    with _errors(), PushClient(url, app_key, app_secret) as client:
        result = client.push(request)
    _emit(result, as_json, lambda: click.echo(result.get("msg_id") or result.get("task_id")))


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
