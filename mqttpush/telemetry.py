"""Counting for the metrics endpoint, in plain Python numbers (docs/operations.md, "Metrics").

The broker, the store thread and the vendor gateway count here on their hot paths: an int added to
or a bucket found by bisection, no lock, no library. ``GET /metrics`` (``mqttpush.api.metrics``)
reads these at scrape time and turns them into Prometheus samples, so nothing below the API layer
imports prometheus-client.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Seconds: from a fast SQLite commit (sub-millisecond) to a slow vendor answer (seconds)."""

SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
"""Calls per store group commit (it takes at most a few hundred)."""


class Histogram:
    """A fixed-bucket histogram of plain numbers: ``observe`` is one bisection and two additions.

    Read from another thread (the event loop reading what the store thread counts) it may be one
    observation behind in a bucket or the sum: fine for monitoring, never torn into nonsense.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> Iterator[tuple[float, int]]:
        """``(upper bound, observations <= it)`` per bucket, the last bound ``inf``."""
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            yield bound, total


class CommitStats:
    """What the store's group committer did: calls per commit and how long each group took
    (the calls' own work plus the COMMIT), counted on the store thread."""

    __slots__ = ("batch_sizes", "seconds")

    def __init__(self) -> None:
        self.batch_sizes = Histogram(SIZE_BUCKETS)
        self.seconds = Histogram()

    def observe(self, calls: int, seconds: float) -> None:
        self.batch_sizes.observe(calls)
        self.seconds.observe(seconds)
