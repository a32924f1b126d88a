"""The SQLite store: the source of truth. All SQL of mqttpush lives in this package."""

from mqttpush.store.store import Store, check_store_url

__all__ = ["Store", "check_store_url"]
