"""After a push: ``status``, ``task status|cancel``, ``cancel``, ``recall``, ``approve``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from mqttpush.cli.shell import auth_options, emit, errors, json_option, push_client

if TYPE_CHECKING:
    from mqttpush.client import PushClient


@click.command()
@click.argument("msg_ids", nargs=-1, required=True)
@auth_options
@json_option
def status(msg_ids: tuple[str, ...], url: str, app_key: str, app_secret: str, as_json: bool) -> None:
    """Show each delivery of a message with its state history."""
    with errors(), push_client(url, app_key, app_secret) as client:
        docs = [client.message(m) for m in msg_ids]

    def human() -> None:
        for doc in docs:
            click.echo(f"message {doc['msg_id']}")
            for d in doc["deliveries"]:
                trail = " → ".join(e["state"] for e in d["history"])
                click.echo(f"  {d['device_id']}  {d['state']:<10} via {d['channel']}  ({trail})")

    emit(docs[0] if len(docs) == 1 else docs, as_json, human)


@click.group()
def task() -> None:
    """Group sends: progress and cancel."""


def _print_task(doc: dict[str, Any]) -> None:
    counts = "  ".join(
        f"{k}={doc[k]}" for k in ("targeted", "published", "forwarded", "arrived", "opened", "failed")
    )
    click.echo(f"task {doc['task_id']} {doc['state']}  {counts}")


def _by_id(
    name: str,
    doc: str,
    argument: str,
    call: Callable[[PushClient, str], dict[str, Any]],
    human: Callable[[str, dict[str, Any]], None],
) -> click.Command:
    """A command that calls the API with one id and prints the answer."""

    @click.command(name, help=doc)
    @click.argument(argument)
    @auth_options
    @json_option
    def command(url: str, app_key: str, app_secret: str, as_json: bool, **ids: str) -> None:
        (the_id,) = ids.values()
        with errors(), push_client(url, app_key, app_secret) as client:
            answer = call(client, the_id)
        emit(answer, as_json, lambda: human(the_id, answer))

    return command


def _print_state(msg_id: str, doc: dict[str, Any]) -> None:
    click.echo(f"{msg_id}: {doc.get('state', doc)}")


task.add_command(
    _by_id(
        "status",
        "Progress of a task: targeted, published, forwarded, arrived, opened, failed.",
        "task_id",
        lambda c, t: c.task(t),
        lambda _t, d: _print_task(d),
    )
)
task.add_command(
    _by_id(
        "cancel",
        "Stop a running task; deliveries not yet published become 'cancelled'.",
        "task_id",
        lambda c, t: c.cancel_task(t),
        lambda _t, d: _print_task(d),
    )
)
cancel = _by_id(
    "cancel",
    "Stop a message not yet (fully) sent: a draft, a scheduled send, a series, a running task.",
    "msg_id",
    lambda c, m: c.cancel(m),
    _print_state,
)
recall = _by_id(
    "recall",
    "Take a sent message back from devices that have not opened it (revoke).",
    "msg_id",
    lambda c, m: c.recall(m),
    _print_state,
)


@click.command()
@click.argument("msg_id")
@click.option("--by", "approver", required=True, help="Who approves (kept with the message).")
@auth_options
@json_option
def approve(msg_id: str, approver: str, url: str, app_key: str, app_secret: str, as_json: bool) -> None:
    """Approve a draft: it goes out at its start time (or now)."""
    with errors(), push_client(url, app_key, app_secret) as client:
        doc = client.approve(msg_id, approver)
    emit(doc, as_json, lambda: click.echo(f"{msg_id}: {doc['state']} by {doc['approved_by']}"))
