"""``mqttpush device listen``: act as a device, print each message and acknowledge it."""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import click

from mqttpush.cli.shell import errors, fail, json_option


def _print_message(env: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(env))
    else:
        text = " — ".join(p for p in (env.get("title"), env.get("body")) if p)
        data = f" data={json.dumps(env['data'])}" if env.get("data") else ""
        click.echo(f"[{env['id']}] {text}{data}")
    sys.stdout.flush()


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
        _print_message(env, as_json)
        if opened:
            client.opened(env["id"])
        if count is not None and received >= count:
            done.set()

    with errors():
        client = DeviceClient.from_server(url, device_id, device_token, on_message=on_message)
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
