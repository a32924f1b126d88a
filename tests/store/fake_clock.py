"""A clock the tests move by hand, so the store never sees wall time and no test sleeps."""

from __future__ import annotations

START = 1_700_000_000.0


class FakeClock:
    def __init__(self, start: float = START) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t
