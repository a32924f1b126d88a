"""``mqttpush``: a thin click shell over the library (README.md's command table).

Every command that prints data takes ``--json`` and prints one JSON document. Errors go to
stderr with exit status 2, whatever their origin (bad flag, refused request, server down).
One module per command group; :mod:`mqttpush.cli.shell` holds what they share.
"""

from __future__ import annotations

import click

from mqttpush import __version__
from mqttpush.cli import apps, devices, listen, messages, ops, push, run, templates, tokens, webhooks
from mqttpush.cli import stats as stats_commands
from mqttpush.cli.doctor import doctor


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mqttpush")
def main() -> None:
    """mqttpush: self-hosted push notifications over MQTT."""


devices.device.add_command(listen.device_listen)
apps.app.add_command(tokens.token)
for command in (
    run.serve,
    run.broker,
    run.bridge,
    apps.app,
    apps.service_credentials,
    apps.mosquitto_config,
    devices.device,
    push.push,
    messages.status,
    messages.task,
    messages.cancel,
    messages.recall,
    messages.approve,
    templates.template,
    ops.backup,
    ops.restore,
    webhooks.webhook,
):
    main.add_command(command)
main.add_command(stats_commands.stats)
main.add_command(stats_commands.report)
main.add_command(doctor)

__all__ = ["main"]
