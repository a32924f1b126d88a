"""The SQLite store: the source of truth. All SQL of mqttpush lives in this package."""

from mqttpush.store.store import Store

__all__ = ["Store"]
