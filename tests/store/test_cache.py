"""The store's in-memory app and settings cache: changes through this store are seen at once,
changes by another process within CACHE_SECONDS, and a write never gets overtaken by a read."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mqttpush.clock import ManualClock
from mqttpush.store import Store
from mqttpush.store.store import CACHE_SECONDS


async def test_settings_changed_here_are_seen_at_once(tmp_path: Path) -> None:
    store = Store(tmp_path, ManualClock())
    app = store.apps.create_app("shop")
    try:
        assert await store.settings(app.app_key) == {}
        await store.run(store.apps.put_app_settings, app.app_key, {"daily_cap": 3})
        assert await store.settings(app.app_key) == {"daily_cap": 3}
    finally:
        store.close()


async def test_changes_by_another_process_are_seen_after_the_cache_interval(tmp_path: Path) -> None:
    clock = ManualClock()
    mine, theirs = Store(tmp_path, clock), Store(tmp_path, clock)
    app = mine.apps.create_app("shop")
    try:
        assert await mine.settings(app.app_key) == {}
        theirs.apps.put_app_settings(app.app_key, {"daily_cap": 5})
        assert await mine.settings(app.app_key) == {}  # cached
        clock.advance(CACHE_SECONDS)
        assert await mine.settings(app.app_key) == {"daily_cap": 5}
        assert await mine.app("a-not-yet-created") is None
        later = theirs.apps.create_app("later")
        found = await mine.app(later.app_key)  # a miss is never cached: found at once
        assert found is not None and found.secret == later.secret
    finally:
        mine.close()
        theirs.close()


async def test_a_read_in_flight_does_not_cache_what_a_write_replaced(tmp_path: Path) -> None:
    store = Store(tmp_path, ManualClock())
    app = store.apps.create_app("shop")
    try:
        # gather starts the read first: its store call is queued before the write's, so its
        # answer predates the write.
        before, _ = await asyncio.gather(
            store.settings(app.app_key), store.run(store.apps.put_app_settings, app.app_key, {"daily_cap": 7})
        )
        assert before == {}
        assert await store.settings(app.app_key) == {"daily_cap": 7}
    finally:
        store.close()


async def test_callers_cannot_change_the_cached_settings(tmp_path: Path) -> None:
    store = Store(tmp_path, ManualClock())
    app = store.apps.create_app("shop")
    try:
        (await store.settings(app.app_key))["daily_cap"] = 1
        assert await store.settings(app.app_key) == {}
    finally:
        store.close()
