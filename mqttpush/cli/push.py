"""``mqttpush push``: one send, a group send (task) or a batch of rendered templates."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bridge.targets import parse_filter_flags
from mqttpush.cli.shell import auth_options, emit, errors, json_arg, json_option, push_client
from mqttpush.errors import InvalidContent

if TYPE_CHECKING:
    from mqttpush.client import PushClient


def _vars(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--var")
        out[key] = value
    return out


def _filter(items: tuple[str, ...]) -> dict[str, Any]:
    try:
        return parse_filter_flags(items)
    except InvalidContent as exc:
        raise click.BadParameter(exc.message, param_hint="--filter") from None


def _json_object(value: str | None, flag: str) -> dict[str, Any] | None:
    obj = json_arg(value, flag)
    if obj is not None and not isinstance(obj, dict):
        raise click.BadParameter("must be a JSON object", param_hint=flag)
    return obj


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


def _wait_for_task(client: PushClient, task_id: str, show: bool) -> dict[str, Any]:
    """Poll a task until its audience is resolved and every delivery published (or it ends otherwise)."""
    from rich.console import Console
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


def _one_target(**given: Any) -> None:
    chosen = [flag for flag, value in given.items() if value]
    if len(chosen) != 1:
        raise click.UsageError(
            "give exactly one target: --device, --alias, --tag-expr/--filter, --file, "
            f"--broadcast or --vars-file (got {', '.join(chosen) or 'none'})"
        )


def _given(*pairs: tuple[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in pairs if v is not None}


@click.command()
@auth_options
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
    _one_target(
        **{
            "--device": devices,
            "--alias": aliases,
            "--tag-expr/--filter": tag_expr is not None or filters,
            "--file": file,
            "--broadcast": broadcast,
            "--vars-file": vars_file,
        }
    )
    data_obj = _json_object(data, "--data")
    request: dict[str, Any] = _given(
        ("data", data_obj), ("type", kind or None), ("template", template or None)
    )
    if title is not None or body is not None:
        request["notification"] = _given(("title", title), ("body", body))
    if variables:
        request["vars"] = _vars(variables)
    policy = (_json_object(policy_json, "--policy") or {}) | _given(
        ("ttl", ttl),
        ("biz_id", biz_id),
        ("strategy", strategy),
        ("priority", priority),
        ("start_at", start_at),
    )
    if not production:
        policy["production"] = False
    if policy:
        request["policy"] = policy
    audience = _given(("tags", tag_expr), ("filter", _filter(filters) or None))
    with errors(), push_client(url, app_key, app_secret) as client:
        if vars_file is not None:
            result: dict[str, Any] = {
                "msg_ids": client.push_batch(request | {"items": _batch_items(vars_file)})
            }
            emit(result, as_json, lambda: click.echo("\n".join(result["msg_ids"])))
            return
        if devices:
            request["target"] = {"devices": list(devices)}
        elif aliases:
            request["target"] = {"alias": list(aliases), "alias_type": alias_type}
        elif file is not None:
            request["target"] = {"file_id": client.upload_file(file, file_kind, alias_type)["file_id"]}
        elif broadcast:
            request["target"] = {"broadcast": True}
        else:
            request["target"] = audience
        result = client.push(request)
        if wait and "task_id" in result:
            result = result | {"task": _wait_for_task(client, result["task_id"], show=not as_json)}
    emit(result, as_json, lambda: click.echo(result.get("task_id") or result.get("msg_id")))
