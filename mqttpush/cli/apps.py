"""Apps and the store's other local admin: ``app …``, ``service-credentials``, ``mosquitto-config``.

These work on ``--data-dir`` directly, beside a running server; ``app settings`` alone goes
through the signed HTTP API.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from mqttpush.cli.run import host_option, mqtt_port_option
from mqttpush.cli.shell import (
    auth_options,
    data_dir_option,
    emit,
    errors,
    json_arg,
    json_option,
    local_store,
    push_client,
)


@click.group()
def app() -> None:
    """Apps: create and list (local admin, works while the server runs)."""


@app.command("create")
@click.argument("name")
@data_dir_option
@json_option
def app_create(name: str, data_dir: Path, as_json: bool) -> None:
    """Create an app; prints its key and secret (the secret is shown here only)."""
    with local_store(data_dir) as store:
        created = store.apps.create_app(name)
    doc = {"app_key": created.app_key, "app_secret": created.secret}
    emit(doc, as_json, lambda: click.echo(f"app_key:    {created.app_key}\napp_secret: {created.secret}"))


@app.command("list")
@data_dir_option
@json_option
def app_list(data_dir: Path, as_json: bool) -> None:
    """List apps with their device counts."""
    with local_store(data_dir) as store:
        apps = store.apps.list_apps()

    def human() -> None:
        for a in apps:
            click.echo(f"{a.app_key}  {a.name}  devices={a.devices}")

    emit({"apps": [asdict(a) for a in apps]}, as_json, human)


@app.group("vendor")
def app_vendor() -> None:
    """Vendor channel credentials of an app (local admin)."""


@app_vendor.command("set")
@click.argument("app_key")
@data_dir_option
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

    raw = json_arg(config_file.read_text(), "--config")
    if not isinstance(raw, dict) or not raw:
        raise click.BadParameter("must be a JSON object with one entry per vendor", param_hint="--config")
    with local_store(data_dir, app_key) as store:
        stored = []
        for vendor, obj in raw.items():
            config = check_vendor_config(
                vendor, obj, config_file.parent.resolve(), store.vendors.vendor_config(app_key, vendor)
            )
            store.vendors.put_vendor_config(app_key, vendor, config)
            stored.append(vendor)
    emit(
        {"app_key": app_key, "vendors": stored},
        as_json,
        lambda: click.echo("configured: " + " ".join(stored)),
    )


@app.command("vapid")
@click.argument("app_key")
@data_dir_option
@click.option(
    "--rotate",
    is_flag=True,
    help="Replace the key pair; browser subscriptions made with the old public key stop working.",
)
@json_option
def app_vapid(app_key: str, data_dir: Path, rotate: bool, as_json: bool) -> None:
    """The app's VAPID public key for WebPush, generated on first use."""
    from bridge.vendors import check_vendor_config, ensure_vapid

    with local_store(data_dir, app_key) as store:
        config = store.vendors.vendor_config(app_key, "webpush")
        if rotate and config and config.get("vapid_private_pem"):
            kept = {k: v for k, v in config.items() if not k.startswith("vapid_")}
            fresh = check_vendor_config("webpush", config["obj"], Path(config["base_dir"]), kept)
            store.vendors.put_vendor_config(app_key, "webpush", fresh)
        public_key = ensure_vapid(store, app_key)
    emit({"public_key": public_key}, as_json, lambda: click.echo(public_key))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(value: str) -> float:
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise click.BadParameter("use seconds or a duration like 90m, 24h, 7d", param_hint="--overlap")
    return float(match.group(1)) * _UNITS[match.group(2)]


@app.group("secret")
def app_secret() -> None:
    """The app's signing secret (local admin)."""


@app_secret.command("rotate")
@click.argument("app_key")
@data_dir_option
@click.option(
    "--overlap",
    default="24h",
    show_default=True,
    help="How long the old secret keeps verifying (seconds or 90m, 24h, 7d; 0 = not at all).",
)
@json_option
def app_secret_rotate(app_key: str, data_dir: Path, overlap: str, as_json: bool) -> None:
    """Give the app a new secret (shown here only); the old one works until the overlap ends."""
    seconds = _seconds(overlap)
    with local_store(data_dir, app_key) as store, errors():
        rotated = store.apps.rotate_app_secret(app_key, seconds)
    doc = {"app_key": app_key, "app_secret": rotated.secret, "previous_valid_until": rotated.previous_until}
    emit(doc, as_json, lambda: click.echo(f"app_key:    {app_key}\napp_secret: {rotated.secret}"))


@app.command("settings")
@auth_options
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
    with errors(), push_client(url, app_key, app_secret) as client:
        settings = client.settings()
        if changes:
            settings = client.put_settings(settings | changes)
    emit(settings, as_json, lambda: click.echo("\n".join(f"{k}: {v}" for k, v in settings.items())))


@click.command("service-credentials")
@data_dir_option
@click.option(
    "--rotate", is_flag=True, help="Replace the password (restart a split bridge with the new one)."
)
@json_option
def service_credentials(data_dir: Path, rotate: bool, as_json: bool) -> None:
    """The bridge's privileged MQTT identity (publish/subscribe under mqttpush/#)."""
    with local_store(data_dir) as store:
        username, password = (
            store.accounts.rotate_service_credentials() if rotate else store.accounts.service_credentials()
        )
    emit(
        {"username": username, "password": password},
        as_json,
        lambda: click.echo(f"username: {username}\npassword: {password}"),
    )


@click.command("mosquitto-config")
@data_dir_option
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for mosquitto.conf, passwords and acl.",
)
@host_option
@mqtt_port_option
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
    with local_store(data_dir) as store:
        sync = MosquittoSync(store, out, pid_file)
        devices = sync.write()
    with errors():
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
    emit(doc, as_json, lambda: click.echo(f"wrote {conf} ({devices} devices); run: mosquitto -c {conf}"))
