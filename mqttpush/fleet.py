"""A fleet migrating in (``mqttpush device import``): its JSON lines, checked without I/O.

One JSON object a line: ``install_id`` and ``platform`` are required; ``tags``, ``alias``,
``alias_type``, ``app_version``, ``locale``, ``channel`` and ``test`` are optional. Blank lines
are skipped. The first bad line stops the import, so a half-read file never reaches the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from mqttpush.errors import InvalidContent
from mqttpush.models import Platform

_TEXT_FIELDS = ("alias", "alias_type", "app_version", "locale", "channel")


def check_import_row(row: Any) -> dict[str, Any]:
    """One decoded import line, checked; raises :class:`ValueError` saying what is wrong."""
    if not isinstance(row, dict) or not isinstance(row.get("install_id"), str) or not row["install_id"]:
        raise ValueError("needs install_id")
    Platform(str(row.get("platform")))
    tags = row.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) and t for t in tags)):
        raise ValueError("tags must be a list of strings")
    for key in _TEXT_FIELDS:
        if row.get(key) is not None and not isinstance(row[key], str):
            raise ValueError(f"{key} must be a string")
    return row


def parse_import_lines(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Every row of an import file; raises :class:`InvalidContent` (``bad_import_line``) naming the line."""
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(check_import_row(json.loads(line)))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            raise InvalidContent(f"line {n}: {exc}", code="bad_import_line") from None
    return rows
