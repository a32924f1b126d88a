"""``mqttpush webhook add|list|remove``: events posted to the app server (docs/webhooks.md).

``webhook add [auth] --url U --event E...``: the contract's ``[auth]`` has a ``--url`` of its own
(the server), so ``add`` takes ``--url`` twice, server first, then the webhook's; with the server in
``MQTTPUSH_URL`` a single ``--url`` is the webhook's. ``--webhook-url U`` says it unambiguously.
"""

from __future__ import annotations

import os
from typing import Any

import click

from mqttpush.cli.shell import auth_options, credential_options, emit, errors, fail, json_option, push_client
from mqttpush.errors import ClientError

_URL_HELP = (
    "The server URL, then the webhook's: --url SERVER --url WEBHOOK (with MQTTPUSH_URL set, one"
    " --url is the webhook's)."
)


def _urls(urls: tuple[str, ...], webhook_url: str | None) -> tuple[str, str]:
    """``(server URL, webhook URL)`` from the ``--url`` flags, ``--webhook-url`` and MQTTPUSH_URL."""
    server_env = os.environ.get("MQTTPUSH_URL") or None
    if webhook_url is not None:
        if len(urls) > 1:
            raise click.BadParameter("give the server's --url once with --webhook-url", param_hint="--url")
        server = urls[0] if urls else server_env
    elif len(urls) == 2:
        server, webhook_url = urls
    elif len(urls) == 1 and server_env:
        server, webhook_url = server_env, urls[0]
    elif len(urls) > 2:
        raise click.BadParameter("at most twice: the server's URL, then the webhook's", param_hint="--url")
    else:
        raise click.BadParameter(
            "the webhook's URL is missing: --url SERVER --url WEBHOOK (or MQTTPUSH_URL and --url WEBHOOK)",
            param_hint="--url",
        )
    if not server:
        raise click.BadParameter("the server URL is missing (--url or MQTTPUSH_URL)", param_hint="--url")
    return server, webhook_url


def _events(values: tuple[str, ...]) -> list[str]:
    """``--event a --event b`` or ``--event a,b``."""
    return [e.strip() for value in values for e in value.split(",") if e.strip()]


@click.group()
def webhook() -> None:
    """Webhooks: delivery, token, task and alarm events posted to your app server."""


@webhook.command("add")
@click.option("--url", "urls", multiple=True, help=_URL_HELP)
@click.option("--webhook-url", default=None, help="The webhook's URL (http:// or https://).")
@credential_options
@click.option(
    "--event",
    "events",
    multiple=True,
    required=True,
    help="An event to receive (repeatable, or comma-separated): delivery.arrived, delivery.opened, "
    "delivery.dismissed, delivery.failed, delivery.expired, token.removed, task.done, alarm.",
)
@json_option
def webhook_add(
    urls: tuple[str, ...],
    webhook_url: str | None,
    app_key: str | None,
    app_secret: str | None,
    events: tuple[str, ...],
    as_json: bool,
) -> None:
    """Register an endpoint → {"webhook_id", "secret"}; the secret signs every POST (shown once)."""
    server, hook = _urls(urls, webhook_url)
    wanted = _events(events)
    if not wanted:
        raise click.BadParameter("name at least one event", param_hint="--event")
    with errors(), push_client(server, app_key, app_secret) as client:
        try:
            doc = client.add_webhook(hook, wanted)
        except ClientError as exc:  # the server's refusal, told against the flag that caused it
            flag = {"unknown_event": "--event", "bad_webhook_url": "--url"}.get(exc.code)
            if flag is not None:
                fail(f"{flag}: {exc.message} [{exc.code}]")
            raise
    emit(doc, as_json, lambda: click.echo(f"webhook {doc['webhook_id']}\nsecret {doc['secret']}"))


@webhook.command("list")
@auth_options
@json_option
def webhook_list(url: str, app_key: str, app_secret: str, as_json: bool) -> None:
    """The app's webhooks: state, backlog, last success, last error."""
    with errors(), push_client(url, app_key, app_secret) as client:
        docs = client.list_webhooks()
    emit({"webhooks": docs}, as_json, lambda: _print(docs))


def _print(docs: list[dict[str, Any]]) -> None:
    if not docs:
        click.echo("no webhooks")
    for d in docs:
        click.echo(
            f"{d['webhook_id']}  {d['state']:<8} {d['url']}  events={','.join(d['events'])}"
            f"  backlog={d['backlog']}  failed={d['failed_events']}"
        )
        if d["last_error"]:
            click.echo(f"    last error at {d['last_error_at']}: {d['last_error']}")


@webhook.command("remove")
@click.argument("webhook_id")
@auth_options
@json_option
def webhook_remove(webhook_id: str, url: str, app_key: str, app_secret: str, as_json: bool) -> None:
    """Remove a webhook; events still waiting for it are dropped."""
    with errors(), push_client(url, app_key, app_secret) as client:
        doc = client.remove_webhook(webhook_id)
    emit(doc, as_json, lambda: click.echo(f"webhook {webhook_id} removed"))
