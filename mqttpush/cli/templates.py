"""``mqttpush template set|list``: stored templates with ``{{var}}`` placeholders."""

from __future__ import annotations

from typing import Any

import click

from mqttpush.cli.shell import auth_options, emit, errors, json_arg, json_option, push_client


@click.group()
def template() -> None:
    """Stored templates with {{var}} placeholders."""


@template.command("set")
@click.argument("name")
@auth_options
@click.option("--title", default=None)
@click.option("--body", default=None)
@click.option("--data", default=None, help="JSON object; string values may hold {{var}} too.")
@click.option("--type", "kind", type=click.Choice(["notification", "message"]), default=None)
@json_option
def template_set(
    name: str,
    url: str,
    app_key: str,
    app_secret: str,
    title: str | None,
    body: str | None,
    data: str | None,
    kind: str | None,
    as_json: bool,
) -> None:
    """Create or replace a template."""
    tmpl: dict[str, Any] = {}
    if title is not None or body is not None:
        tmpl["notification"] = {k: v for k, v in (("title", title), ("body", body)) if v is not None}
    data_obj = json_arg(data, "--data")
    if data_obj is not None:
        tmpl["data"] = data_obj
    if kind:
        tmpl["type"] = kind
    with errors(), push_client(url, app_key, app_secret) as client:
        doc = client.put_template(name, tmpl)
    emit(doc, as_json, lambda: click.echo(f"template {name} saved"))


@template.command("list")
@auth_options
@json_option
def template_list(url: str, app_key: str, app_secret: str, as_json: bool) -> None:
    """List the app's templates."""
    with errors(), push_client(url, app_key, app_secret) as client:
        docs = client.templates()
    emit({"templates": docs}, as_json, lambda: click.echo("\n".join(d["name"] for d in docs)))
