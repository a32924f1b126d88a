"""Time, injectable: production code asks a :class:`Clock`, tests pass a fake one.

Everything time-driven (TTL expiry, schedules, quiet hours, pacing, re-push) reads ``now()``
and waits with ``sleep()``, so a test can move time forward without waiting for it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mqttpush.errors import InvalidContent


def zone(name: str | None) -> ZoneInfo:
    """An IANA time zone (``Europe/Berlin``); UTC when None. Raises 422 ``bad_timezone``."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidContent(
            f"unknown time zone {name!r} (use an IANA name like Europe/Berlin)", code="bad_timezone"
        ) from None


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told to (tests, simulations); thread-safe to ``advance``.

    Sleepers wake when :meth:`advance` passes their deadline. ``now()`` starts at ``start``.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + max(0.0, seconds), next(self._seq), fut))
        await fut

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed (call on the loop's thread)."""
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
