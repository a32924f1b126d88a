"""Operations on a whole data dir: ``backup`` and ``restore`` (docs/operations.md).

``backup`` works beside a running server; ``restore`` refuses a store a process still has open.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from mqttpush import __version__
from mqttpush.cli.shell import data_dir_option, emit, errors, json_option, store_url


@click.command("backup")
@click.argument("dest", type=click.Path(path_type=Path))
@data_dir_option
@json_option
def backup(dest: Path, data_dir: Path, as_json: bool) -> None:
    """Copy the store (database, master key, manifest) into the new directory DEST, online."""
    from mqttpush.store.backup import backup as take_backup

    data_dir = _sqlite_only(data_dir, "backup")
    with errors():
        manifest = take_backup(data_dir, dest, __version__, time.time())
    counts = manifest["counts"]
    emit(
        {"backup": str(dest), "manifest": manifest},
        as_json,
        lambda: click.echo(
            f"backup in {dest}: {counts['apps']} apps, {counts['devices']} devices, {counts['messages']} messages"
        ),
    )


@click.command("restore")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@data_dir_option
@click.option("--force", is_flag=True, help="Replace the store in a data dir that already holds one.")
@json_option
def restore(src: Path, data_dir: Path, force: bool, as_json: bool) -> None:
    """Check the backup in SRC against its manifest and install it as the store in --data-dir
    (the server must be stopped)."""
    from mqttpush.store.backup import restore as install

    data_dir = _sqlite_only(data_dir, "restore")
    with errors():
        manifest = install(src, data_dir, force=force)
    emit(
        {"restored": str(data_dir), "manifest": manifest},
        as_json,
        lambda: click.echo(f"restored {src} into {data_dir} (schema {manifest['schema_version']})"),
    )


def _sqlite_only(data_dir: Path, command: str) -> Path:
    """backup/restore copy SQLite's file; a PostgreSQL store has its own tools."""
    from mqttpush.store.postgres import is_postgres_url
    from mqttpush.store.store import sqlite_dir

    url = store_url()
    if url is None:
        return data_dir
    if is_postgres_url(url):
        raise click.BadParameter(
            f"{command} copies an SQLite store; for PostgreSQL use pg_dump/pg_restore and copy"
            " master.key from the data dir (docs/scale-out.md)",
            param_hint="--store",
        )
    return sqlite_dir(url)
