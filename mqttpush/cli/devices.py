"""``mqttpush device …``: register, import, list, show, update, tag, alias, token.

``device listen`` (a device simulator) lives in :mod:`mqttpush.cli.listen`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

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
from mqttpush.errors import InvalidContent
from mqttpush.fleet import parse_import_lines


@click.group()
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
    with errors(), push_client(url, app_key) as client:
        reg = client.register_device(install_id, platform, app_version=app_version, locale=locale)
    doc = {"device_id": reg["device_id"], "device_token": reg["device_token"]}
    emit(
        doc,
        as_json,
        lambda: click.echo(f"device_id:    {doc['device_id']}\ndevice_token: {doc['device_token']}"),
    )


def _print_device(doc: dict[str, Any]) -> None:
    for key, value in doc.items():
        if key != "vendor_tokens":
            click.echo(f"{key}: {value}")
    for t in doc.get("vendor_tokens", []):
        gone = f"  removed {t['removed_at']}: {t['removed_reason']}" if t.get("removed_at") else ""
        click.echo(f"vendor token: {t['vendor']} {t['token']}  added {t['added_at']}{gone}")


@device.command("show")
@click.argument("device_id")
@auth_options
@json_option
def device_show(device_id: str, url: str, app_key: str, app_secret: str, as_json: bool) -> None:
    """A device's attributes, tags, aliases, presence and (masked) vendor tokens."""
    with errors(), push_client(url, app_key, app_secret) as client:
        doc = client.device(device_id)
    emit(doc, as_json, lambda: _print_device(doc))


@device.command("update")
@click.argument("device_id")
@auth_options
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
    given = (
        ("test", is_test),
        ("app_version", app_version),
        ("channel", channel),
        ("locale", locale),
        ("timezone", timezone),
    )
    attrs = {k: v for k, v in given if v is not None}
    if not attrs:
        raise click.UsageError(
            "nothing to change: give --test/--no-test, --app-version, --channel, --locale or --timezone"
        )
    with errors(), push_client(url, app_key, app_secret) as client:
        doc = client.update_device(device_id, **attrs)
    emit(doc, as_json, lambda: click.echo(f"device {device_id} updated"))


@device.group("tag")
def device_tag() -> None:
    """Tags of a device."""


def _tag_command(action: str) -> None:
    @device_tag.command(action, help=f"{action.capitalize()} tags of a device; prints its tags after.")
    @click.argument("device_id")
    @click.argument("tags", nargs=-1, required=True)
    @auth_options
    @json_option
    def command(
        device_id: str, tags: tuple[str, ...], url: str, app_key: str, app_secret: str, as_json: bool
    ) -> None:
        with errors(), push_client(url, app_key, app_secret) as client:
            now = client.update_tags(device_id, **{action: list(tags)})
        emit({"device_id": device_id, "tags": now}, as_json, lambda: click.echo(" ".join(now)))


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
    @auth_options
    @json_option
    def command(
        device_id: str, alias: str, alias_type: str, url: str, app_key: str, app_secret: str, as_json: bool
    ) -> None:
        with errors(), push_client(url, app_key, app_secret) as client:
            if action == "remove":
                now = client.unbind_alias(device_id, alias, alias_type)
            else:
                now = client.bind_alias(device_id, alias, alias_type, mode=action)
        emit(
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
@auth_options
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
    sub: dict[str, Any] | None = None
    if vendor == "webpush":
        if subscription is None:
            raise click.UsageError("--vendor webpush needs --subscription SUB.json")
        sub = json_arg(subscription.read_text(), "--subscription")
        if not isinstance(sub, dict):
            raise click.BadParameter("must hold a JSON object", param_hint="--subscription")
    elif token is None:
        raise click.UsageError(f"--vendor {vendor} needs --token")
    with errors(), push_client(url, app_key, app_secret) as client:
        doc = client.set_vendor_token(device_id, vendor, token, sub)
    emit(doc, as_json, lambda: click.echo(" ".join(t["vendor"] for t in doc["tokens"])))


@device.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@data_dir_option
@click.option("--app-key", envvar="MQTTPUSH_APP_KEY", required=True)
@json_option
def device_import(file: Path, data_dir: Path, app_key: str, as_json: bool) -> None:
    """Register many devices from JSON lines (install_id, platform, tags, alias, alias_type, app_version,
    locale, channel, test) — local admin, a fleet migrating in."""
    from bridge.mosquitto import password_hash

    try:
        rows = parse_import_lines(file.read_text().splitlines())
    except InvalidContent as exc:
        raise click.BadParameter(exc.message, param_hint="FILE") from None
    with local_store(data_dir, app_key, broker_hasher=password_hash) as store:
        devices = []
        for i in range(0, len(rows), 5000):
            devices += store.devices.import_devices(app_key, rows[i : i + 5000])
    emit(
        {"imported": len(devices), "devices": devices},
        as_json,
        lambda: click.echo(f"imported {len(devices)} devices"),
    )


@device.command("list")
@data_dir_option
@click.option("--app-key", envvar="MQTTPUSH_APP_KEY", required=True)
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True)
@json_option
def device_list(data_dir: Path, app_key: str, limit: int, as_json: bool) -> None:
    """List an app's devices (local admin)."""
    with local_store(data_dir) as store:
        devices = store.devices.list_devices(app_key, limit)
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
    emit(
        {"devices": docs},
        as_json,
        lambda: click.echo(
            "\n".join(
                f"{d['device_id']}  {d['platform']:<8} {'online' if d['online'] else 'offline'}" for d in docs
            )
        ),
    )
