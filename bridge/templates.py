"""``{{var}}`` templates for titles, bodies and data (pure)."""

from __future__ import annotations

import re
from typing import Any

from mqttpush.errors import InvalidContent

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]{0,63})\s*\}\}")


def placeholders(value: Any) -> set[str]:
    """Every variable name a template value (string, or dict/list of them) mentions."""
    if isinstance(value, str):
        return set(_PLACEHOLDER.findall(value))
    if isinstance(value, dict):
        return set().union(*(placeholders(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(placeholders(v) for v in value)) if value else set()
    return set()


def render(value: Any, variables: dict[str, Any]) -> Any:
    """Replace ``{{name}}`` in every string of ``value``; a missing variable is a 422 ``missing_variable``."""
    if isinstance(value, str):

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in variables:
                raise InvalidContent(f"template variable {name!r} has no value", code="missing_variable")
            return str(variables[name])

        return _PLACEHOLDER.sub(one, value)
    if isinstance(value, dict):
        return {k: render(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, variables) for v in value]
    return value
