"""``mqttpush device listen``: act as a device, print each message and acknowledge it.

With ``--webpush-keys FILE`` it is also a UnifiedPush / Web Push subscriber (docs/webpush.md):
the first run makes an endpoint and its keys, saves them in FILE (mode 0600) and prints the
subscription for the application server; every run decrypts what is pushed there and prints the
plaintext.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mqttpush.cli.shell import errors, fail, json_option

if TYPE_CHECKING:
    from mqttpush.device import DeviceClient, WebPushSubscription


def _print_message(env: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(env))
    else:
        text = " — ".join(p for p in (env.get("title"), env.get("body")) if p)
        data = f" data={json.dumps(env['data'])}" if env.get("data") else ""
        click.echo(f"[{env['id']}] {text}{data}")
    sys.stdout.flush()


def _print_push(env: dict[str, Any], plain: bytes, as_json: bool) -> None:
    try:
        text: str | None = plain.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if as_json:
        doc = {k: v for k, v in env.items() if k != "body"}
        if text is not None:
            doc["plaintext"] = text
        else:
            doc["plaintext_base64"] = base64.b64encode(plain).decode("ascii")
        click.echo(json.dumps(doc))
    else:
        shown = text if text is not None else "base64:" + base64.b64encode(plain).decode("ascii")
        click.echo(f"[{env['id']}] push to {env.get('instance')} ({env.get('endpoint_id')}): {shown}")
    sys.stdout.flush()


def _subscriptions(client: DeviceClient, path: Path, instance: str) -> None:
    """Load the saved subscriptions in ``path``, or make one for ``instance`` and save it there."""
    from mqttpush.device import WebPushSubscription

    if path.exists():
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            fail(f"--webpush-keys: cannot read {path}: {exc}")
        with errors():
            saved = [WebPushSubscription.from_json(d) for d in (doc if isinstance(doc, list) else [doc])]
        for each in saved:
            client.add_subscription(each)
        return
    with errors():
        sub: WebPushSubscription = client.subscribe(instance)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump([sub.to_json()], f)
    except OSError as exc:
        fail(f"--webpush-keys: cannot write {path}: {exc}")
    click.echo(f"subscription: {json.dumps(sub.push_subscription())}", err=True)


@click.command("listen")
@click.option("--url", envvar="MQTTPUSH_URL", required=True)
@click.option("--device-id", envvar="MQTTPUSH_DEVICE_ID", required=True)
@click.option("--device-token", envvar="MQTTPUSH_DEVICE_TOKEN", required=True)
@click.option("--count", type=click.IntRange(1), default=None, help="Exit after this many messages.")
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Stop listening after this many seconds; with --count, fewer messages by then is an error.",
)
@click.option("--opened", is_flag=True, help="Also send an 'opened' receipt for each message.")
@click.option(
    "--webpush-keys",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Web Push / UnifiedPush subscriptions: decrypt and print what is pushed to them. A missing"
    " FILE is made: a new endpoint for --instance, its keys saved there (0600), the subscription"
    " printed on stderr.",
)
@click.option("--instance", default="default", show_default=True, help="The endpoint's instance name.")
@json_option
def device_listen(
    url: str,
    device_id: str,
    device_token: str,
    count: int | None,
    timeout: float | None,
    opened: bool,
    webpush_keys: Path | None,
    instance: str,
    as_json: bool,
) -> None:
    """Act as a device: print each message and acknowledge it (arrived receipt)."""
    from mqttpush.device import DeviceClient

    done = threading.Event()
    received = 0

    def counted(env: dict[str, Any]) -> None:
        nonlocal received
        received += 1
        if opened:
            client.opened(env["id"])
        if count is not None and received >= count:
            done.set()

    def on_message(env: dict[str, Any]) -> None:
        _print_message(env, as_json)
        counted(env)

    def on_push(env: dict[str, Any], plain: bytes) -> None:
        _print_push(env, plain, as_json)
        counted(env)

    with errors():
        client = DeviceClient.from_server(
            url, device_id, device_token, on_message=on_message, on_push=on_push
        )
    if webpush_keys is not None:
        _subscriptions(client, webpush_keys, instance)
    with errors():
        client.connect()
    if not as_json:
        click.echo(f"device {device_id} listening on {client.app_key} (Ctrl-C stops)", err=True)
    try:
        finished = done.wait(timeout)
    except KeyboardInterrupt:  # Ctrl-C is how an open-ended listen ends
        finished = True
    client.disconnect()
    # A timeout alone just ends listening; only --count messages that did not come is an error.
    if not finished and count is not None:
        fail(f"{received} of {count} messages within {timeout}s [listen_timeout]")
