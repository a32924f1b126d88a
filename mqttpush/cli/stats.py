"""``stats`` (counters over time, from the server) and ``report`` (a month, from the store):
docs/statistics.md."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from mqttpush.cli.shell import (
    auth_options,
    data_dir_option,
    emit,
    errors,
    json_option,
    local_store,
    push_client,
)
from mqttpush.errors import MqttPushError


def _utc(t: float, step: str) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d" if step == "1d" else "%Y-%m-%d %H:%M")


def _check(since: str, until: str | None, by: tuple[str, ...]) -> list[str]:
    """Refuse what the server would refuse, naming the flag (exit status 2)."""
    from mqttpush.store.stats import parse_by, parse_time

    now = time.time()
    try:
        start = parse_time(since, now, "--since")
    except MqttPushError as exc:
        raise click.BadParameter(exc.message, param_hint="--since") from None
    try:
        end = parse_time(until, now, "--until") if until else now
    except MqttPushError as exc:
        raise click.BadParameter(exc.message, param_hint="--until") from None
    if end <= start:
        raise click.BadParameter("must be after --since", param_hint="--until")
    try:
        return parse_by([part for value in by for part in value.split(",")])
    except MqttPushError as exc:
        raise click.BadParameter(exc.message, param_hint="--by") from None


def _csv(doc: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    counters = list(doc["totals"])
    writer.writerow(["t", "time", *doc["by"], *counters])
    for series in doc["series"]:
        key = [series["key"][d] if series["key"][d] is not None else "" for d in doc["by"]]
        for point in series["points"]:
            writer.writerow([point["t"], _utc(point["t"], doc["step"]), *key, *(point[c] for c in counters)])
    return out.getvalue()


def _table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    counters = list(doc["totals"])
    table = Table(
        title=f"{_utc(doc['since'], '1m')} – {_utc(doc['until'], '1m')} UTC, step {doc['step']}",
        show_lines=False,
    )
    table.add_column("time (UTC)")
    for d in doc["by"]:
        table.add_column(d)
    for c in counters:
        table.add_column(c, justify="right")
    for series in doc["series"]:
        key = [str(series["key"][d]) if series["key"][d] is not None else "-" for d in doc["by"]]
        for point in series["points"]:
            table.add_row(_utc(point["t"], doc["step"]), *key, *(str(point[c]) for c in counters))
    table.add_row("total", *([""] * len(doc["by"])), *(str(doc["totals"][c]) for c in counters), style="bold")
    Console(width=max(100, 14 + 16 * len(doc["by"]) + 11 * len(counters))).print(table)


@click.command()
@auth_options
@click.option(
    "--since", default="24h", show_default=True, help="Unix seconds, ISO 8601, or 15m, 24h, 7d ago."
)
@click.option("--until", default=None, help="Like --since; default now.")
@click.option(
    "--by",
    multiple=True,
    help="Group by platform, channel, type, app_version, vendor or reason (repeat, or comma-separated).",
)
@click.option("--step", type=click.Choice(["1m", "1h", "1d"]), default=None, help="Default: from the range.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV: one row per series and time.")
@json_option
def stats(
    url: str,
    app_key: str,
    app_secret: str,
    since: str,
    until: str | None,
    by: tuple[str, ...],
    step: str | None,
    as_csv: bool,
    as_json: bool,
) -> None:
    """Delivery counters over time: targeted, published, forwarded, arrived, opened, failed…"""
    if as_csv and as_json:
        raise click.BadParameter("give --csv or --json, not both", param_hint="--csv")
    dims = _check(since, until, by)
    with errors(), push_client(url, app_key, app_secret) as client:
        doc = client.stats(since, until, dims or None, step)
    if as_csv:
        click.echo(_csv(doc), nl=False)
        return
    emit(doc, as_json, lambda: _table(doc))


@click.command()
@click.option("--month", default=None, help="YYYY-MM (UTC); default the current month.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "csv", "json"]),
    default="html",
    show_default=True,
    help="HTML with inline SVG charts, CSV for scripts, or JSON.",
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write here, not to stdout."
)
@data_dir_option
@json_option
def report(month: str | None, fmt: str, out: Path | None, data_dir: Path, as_json: bool) -> None:
    """A monthly report of every app in the store: totals, per day, by platform and channel, rates."""
    from mqttpush.cli import report as render
    from mqttpush.store.stats import month_range

    month = month or datetime.now(UTC).strftime("%Y-%m")
    try:
        month_range(month)
    except MqttPushError as exc:
        raise click.BadParameter(exc.message, param_hint="--month") from None
    if not (data_dir / "mqttpush.db").is_file():
        raise click.BadParameter(f"{data_dir} holds no mqttpush store", param_hint="--data-dir")
    with local_store(data_dir) as store:
        reports = store.stats.month_report(month)
    fmt = "json" if as_json else fmt
    if fmt == "json":
        text = json.dumps({"month": month, "apps": reports}) + "\n"
    elif fmt == "csv":
        text = render.to_csv(reports)
    else:
        text = render.to_html(reports, month)
    if out is None:
        sys.stdout.write(text)
        return
    with errors():
        try:
            out.write_text(text)
        except OSError as exc:
            raise click.BadParameter(f"cannot write: {exc.strerror}", param_hint="--out") from None
    if as_json:
        return
    click.echo(f"wrote {out} ({len(reports)} app(s), {month})", err=True)
