"""Supervision of the long-running loops (dispatcher, receipts, scheduler, tasks, presence, MQTT
API): delivery never stops silently (docs/delivery.md, "When the store or a loop fails").

A loop that raises (or returns: a loop must not end) is logged once with its cause, not once per
retry, and started again after a backoff that doubles up to a cap, on the loop's own clock. A loop
keeps what it was doing across a restart (the dispatcher puts its batch back, the receipts and
presence writers theirs), so nothing accepted is lost. :meth:`Supervisors.down` names the loops
that are waiting to restart, for ``GET /readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger("mqttpush.supervisor")

FIRST_DELAY = 0.1
MAX_DELAY = 5.0
STABLE_AFTER = 30.0
"""A restarted loop that runs this long without failing has recovered: its next failure is a new
outage, logged again, and the backoff starts over."""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Supervised:
    """One loop under supervision: ``await Supervised(...).run()`` never returns (cancel it to stop)."""

    def __init__(
        self,
        name: str,
        loop: Callable[[], Coroutine[Any, Any, None]],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        *,
        first_delay: float = FIRST_DELAY,
        max_delay: float = MAX_DELAY,
        stable_after: float = STABLE_AFTER,
    ) -> None:
        self.name = name
        self._loop = loop
        self._sleep = sleep
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._stable_after = stable_after
        self.running = False
        """True while the loop runs, False while it waits to be restarted."""
        self.failure: BaseException | None = None
        """The cause of the current outage (None once the loop has run ``stable_after`` again)."""
        self.failures = 0
        """Failures in the current outage."""
        self.restarts = 0
        """Restarts since the start, for tests and metrics."""
        self._up = asyncio.Event()

    async def run(self) -> None:
        delay = self._first_delay
        while True:
            self.running = True
            self._up.set()
            try:
                await self._run_once()
                exc: BaseException = RuntimeError("the loop returned")
            except asyncio.CancelledError:
                self.running = False
                self._up.clear()
                raise
            except Exception as e:
                exc = e
            self.running = False
            self._up.clear()
            if self.failure is None:
                delay = self._first_delay
            repeated = self.failure is not None and _describe(self.failure) == _describe(exc)
            self.failures = self.failures + 1 if self.failure is not None else 1
            self.failure = exc
            if repeated:
                log.debug(
                    "loop failed again loop=%s failures=%d: %s", self.name, self.failures, _describe(exc)
                )
            else:
                log.error(
                    "loop failed loop=%s, restarting with backoff up to %gs: %s",
                    self.name,
                    self._max_delay,
                    _describe(exc),
                    exc_info=exc,
                )
            await self._sleep(delay)
            delay = min(delay * 2, self._max_delay)
            self.restarts += 1

    async def wait_running(self) -> None:
        """Wait until the loop runs (at once if it does)."""
        await self._up.wait()

    async def _run_once(self) -> None:
        if self.failure is None:
            await self._loop()
            return
        task = asyncio.ensure_future(self._loop())
        # Restarted after a failure: once it has run a while, it has recovered.
        stable = asyncio.ensure_future(self._sleep(self._stable_after))
        try:
            await asyncio.wait({task, stable}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise
        finally:
            stable.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stable
        if not task.done():
            log.info("loop resumed loop=%s after failures=%d", self.name, self.failures)
            self.failure, self.failures = None, 0
        await task


class Supervisors:
    """The supervised loops of a node, started and cancelled together."""

    def __init__(self) -> None:
        self.loops: list[Supervised] = []
        self._tasks: list[asyncio.Task[None]] = []

    def start(
        self,
        name: str,
        loop: Callable[[], Coroutine[Any, Any, None]],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> Supervised:
        """Run ``loop()`` under supervision (``sleep``: the loop's clock, for the backoff)."""
        supervised = Supervised(name, loop, sleep)
        self.loops.append(supervised)
        self._tasks.append(asyncio.create_task(supervised.run(), name=f"mqttpush-{name}"))
        return supervised

    def down(self) -> dict[str, str]:
        """Loops waiting to be restarted: name -> the cause."""
        return {
            s.name: _describe(s.failure) if s.failure is not None else "not running"
            for s in self.loops
            if not s.running
        }

    async def wait_running(self) -> None:
        """Wait until every loop runs: after an outage, once each has been restarted."""
        while True:
            for supervised in list(self.loops):
                await supervised.wait_running()
            if not self.down():  # else one failed again meanwhile: wait for it too
                return

    async def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.loops.clear()
