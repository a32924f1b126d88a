"""Every CLI command, API route and error code is documented (the sqlite-utils habit)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from mqttpush.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _commands(group: click.Group, prefix: str = "mqttpush") -> list[str]:
    out = []
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += _commands(cmd, f"{prefix} {name}")
        else:
            out.append(f"{prefix} {name}")
    return out


def _documented(readme: str) -> set[str]:
    """Command forms in the README, with ``tag add\\|remove`` alternatives spelled out."""
    found = set()
    for match in re.finditer(r"mqttpush((?: [a-z][a-z-]*(?:\\\|[a-z][a-z-]*)*)+)", readme):
        forms = [""]
        for word in match.group(1).split():
            forms = [f"{f} {alt}" for f in forms for alt in word.split("\\|")]
        found.update("mqttpush" + f for f in forms)
    return found


def test_every_cli_command_is_in_the_readme() -> None:
    documented = _documented((ROOT / "README.md").read_text())
    missing = [c for c in _commands(main) if not any(d.startswith(c) for d in documented)]
    assert not missing


def test_every_route_and_error_code_is_in_docs_api() -> None:
    api_doc = (ROOT / "docs" / "api.md").read_text()
    source = "\n".join(p.read_text() for d in ("mqttpush", "bridge") for p in (ROOT / d).rglob("*.py"))
    codes = set(re.findall(r'code="([a-z_]+)"', source))
    routes = set(re.findall(r'@api\.(?:get|post|put|delete)\("([^"]+)"', source))
    routes = {re.sub(r"\{(\w+):\w+\}", r"{\1}", r) for r in routes}  # {expr:path} is {expr} to readers
    assert codes and routes
    assert not [c for c in codes if f"`{c}`" not in api_doc]
    assert not [r for r in routes if f"`{r}`" not in api_doc and f"{r}`" not in api_doc]
