"""The suite runs on the event loop ``mqttpush serve`` runs on (uvloop), so code that works only on
asyncio's own loop fails here first (issue 13: the WebSocket listener refused uvloop's transports)."""

from __future__ import annotations

import asyncio

import uvloop

from tests.conftest import Running


async def test_async_tests_run_on_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


def test_servers_started_by_the_fixtures_run_on_uvloop(running: Running) -> None:
    assert isinstance(running.loop, uvloop.Loop)
