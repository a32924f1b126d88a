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


def _task_command(name: str, doc: str, call: Callable[[PushClient, str], dict[str, Any]]) -> None:
    @task.command(name, help=doc)
    @click.argument("task_id")
    @auth_options
    @json_option
    def command(task_id: str, url: str, app_key: str, app_secret: str, as_json: bool) -> None:
        with errors(), push_client(url, app_key, app_secret) as client:
            doc = call(client, task_id)
        emit(doc, as_json, lambda: _print_task(doc))


_task_command(
    "status",
    "Progress of a task: targeted, published, forwarded, arrived, opened, failed.",
    lambda c, t: c.task(t),
)
_task_command(
    "cancel",
    "Stop a running task; deliveries not yet published become 'cancelled'.",
    lambda c, t: c.cancel_task(t),
)


def _message_command(name: str, doc: str, call: Callable[[PushClient, str], dict[str, Any]]) -> click.Command:
    @click.command(name, help=doc)
    @click.argument("msg_id")
    @auth_options
    @json_option
    def command(msg_id: str, url: str, app_key: str, app_secret: str, as_json: bool) -> None:
        with errors(), push_client(url, app_key, app_secret) as client:
            doc = call(client, msg_id)
        emit(doc, as_json, lambda: click.echo(f"{msg_id}: {doc.get('state', doc)}"))

    return command


cancel = _message_command(
    "cancel",
    "Stop a message not yet (fully) sent: a draft, a scheduled send, a series, a running task.",
    lambda c, m: c.cancel(m),
)
recall = _message_command(
    "recall",
    "Take a sent message back from devices that have not opened it (revoke).",
    lambda c, m: c.recall(m),
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
