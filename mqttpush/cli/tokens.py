"""``app token create|list|revoke``: an app's access tokens (local admin over ``--data-dir``,
works beside a running server; docs/api.md, "App access tokens")."""

from __future__ import annotations

import re
import time
from pathlib import Path

import click

from mqttpush.cli.shell import data_dir_option, emit, errors, json_option, local_store

_DURATION = re.compile(r"(\d{1,9}(?:\.\d{1,6})?)([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_LIFETIME = 3650 * 86400.0
# As mqttpush.store.tokens has them (a test checks), without importing the store to start.
SCOPES = ("read", "push", "admin")
MAX_NAME = 64


def duration(value: str, flag: str) -> float:
    """Seconds of ``90m``, ``12h``, ``30d``, ``2w`` or plain seconds; else a usage error naming ``flag``."""
    match = _DURATION.fullmatch(value.strip())
    seconds = float(match.group(1)) * _UNITS[match.group(2)] if match else 0.0
    if not 0 < seconds <= MAX_LIFETIME:
        raise click.BadParameter(
            f"{value!r}: use a positive duration like 90m, 12h, 30d (at most 3650d)", param_hint=flag
        )
    return seconds


@click.group("token")
def token() -> None:
    """App access tokens for `Authorization: Bearer mpt_…` (local admin)."""


@token.command("create")
@click.argument("app_key")
@data_dir_option
@click.option(
    "--scope",
    type=click.Choice(SCOPES),
    default="push",
    show_default=True,
    help="read: GET routes; push: read and sending; admin: all an app signature may do.",
)
@click.option("--expires", default=None, help="Lifetime, e.g. 90m, 12h, 30d (default: never expires).")
@click.option("--name", default=None, help=f"A label for listings (1-{MAX_NAME} characters).")
@json_option
def token_create(
    app_key: str, data_dir: Path, scope: str, expires: str | None, name: str | None, as_json: bool
) -> None:
    """Create a token; it is printed here only (the store keeps its SHA-256)."""
    lifetime = duration(expires, "--expires") if expires is not None else None
    if name is not None and not 1 <= len(name) <= MAX_NAME:
        raise click.BadParameter(f"1-{MAX_NAME} characters", param_hint="--name")
    with local_store(data_dir, app_key) as store, errors():
        new = store.tokens.create(app_key, scope, expires_in=lifetime, name=name)
    doc = {"token": new.token, **new.info.doc(new.info.created_at)}

    def human() -> None:
        click.echo(new.token)
        click.echo(f"token_id: {new.info.token_id}  scope: {scope}  (shown once: store it now)", err=True)

    emit(doc, as_json, human)


@token.command("list")
@click.argument("app_key")
@data_dir_option
@json_option
def token_list(app_key: str, data_dir: Path, as_json: bool) -> None:
    """The app's tokens (never the tokens themselves): id, name, scope, prefix, times, state."""
    with local_store(data_dir, app_key) as store:
        tokens = store.tokens.for_app(app_key)
    now = time.time()
    docs = [t.doc(now) for t in tokens]

    def human() -> None:
        for d in docs:
            click.echo(f"{d['token_id']}  {d['prefix']}  {d['scope']:<5}  {d['state']:<7}  {d['name'] or ''}")

    emit({"tokens": docs}, as_json, human)


@token.command("revoke")
@click.argument("app_key")
@click.argument("token_id_or_token")
@data_dir_option
@json_option
def token_revoke(app_key: str, token_id_or_token: str, data_dir: Path, as_json: bool) -> None:
    """Revoke a token by its id or by the token itself; a running server refuses it within 2 s."""
    with local_store(data_dir, app_key) as store, errors():
        revoked = store.tokens.revoke(app_key, token_id_or_token)
    doc = revoked.doc(time.time())
    emit(doc, as_json, lambda: click.echo(f"revoked {doc['token_id']} ({doc['prefix']})"))
