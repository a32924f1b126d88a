"""Rules of the tree that import-linter cannot see (the import rules are in .importlinter)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SQL = re.compile(r"\b(SELECT|INSERT (OR \w+ )?INTO|DELETE FROM|UPDATE \w+ SET|CREATE TABLE)\s")


def _sources() -> list[Path]:
    return sorted(p for pkg in ("mqttpush", "bridge") for p in (ROOT / pkg).rglob("*.py"))


def test_sql_lives_only_in_the_store() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in _sources()
        if "store" not in path.relative_to(ROOT).parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if SQL.search(line)
    ]
    assert offenders == []


def test_the_sql_rule_sees_sql() -> None:
    assert SQL.search('conn.execute("SELECT device_id FROM devices")')
    assert SQL.search("INSERT OR REPLACE INTO vendor_tokens")
    assert not SQL.search("select a device, then insert it into the inbox")


def test_comments_point_into_the_repository() -> None:
    # DESIGN.md and notes/ do not ship with the code; references must resolve to docs/ here.
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in _sources()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"DESIGN(\.md)?\s*§|notes/", line)
    ]
    assert offenders == []
