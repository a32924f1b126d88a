"""Request rate limits: token buckets per key (an app key, a client IP), on a clock passed in.

No I/O and no clock of its own: ``now`` is a callable (``time.monotonic`` in the server, a
plain number in tests), so every decision here is tested without waiting.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_KEYS = 100_000
"""Buckets kept at most; beyond, the least recently used go (one comes back full: a fresh burst)."""


@dataclass
class TokenBucket:
    """``rate`` tokens a second up to ``burst``; a request takes one."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def take(self, now: float) -> float:
        """Take a token at ``now``: 0.0 when granted, else the seconds until one is there."""
        # A clock that steps back refills nothing and never makes tokens negative.
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One :class:`TokenBucket` per key; a key over its limit never touches another's bucket."""

    def __init__(self, rate: float, burst: int, now: Callable[[], float], max_keys: int = MAX_KEYS) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("a rate limit needs rate > 0, burst >= 1 and max_keys >= 1")
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._now = now
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @classmethod
    def of(cls, rate: float, burst: int, now: Callable[[], float]) -> RateLimiter | None:
        """The limiter for a configured rate; None (no limit) when ``rate`` is 0."""
        return cls(rate, burst, now) if rate > 0 else None

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Take a token for ``key``: 0.0 when granted, else the seconds until one is there."""
        now = self._now()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket.full(self.rate, self.burst, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)


def retry_after(wait: float) -> int:
    """``Retry-After`` for a wait: whole seconds, at least 1."""
    return max(1, math.ceil(wait))
