"""What one address may cost the broker: connection caps, failed-login back-off, refusal summaries.

Pure decision code (no I/O, time passed in as ``now``), so it is tested without sockets;
``PushBroker`` asks it at accept time and after reading CONNECT (docs/security.md).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class BrokerLimits:
    """What the broker lets one address, and everyone together, cost it (docs/security.md)."""

    max_connections: int = 100_000
    """Concurrent MQTT connections in all; a socket over it is closed before CONNECT is read."""
    max_connections_per_ip: int = 10_000
    login_failures: int = 20
    """Failed CONNECTs from one address (each within ``login_window`` s of the last) before back-off."""
    login_window: float = 60.0
    login_backoff: float = 1.0
    """First block of a failing address, in seconds; doubles with each further failure."""
    login_backoff_max: float = 300.0
    refusal_log_interval: float = 10.0
    """Refused connections are logged as one summary line at most this often."""


class ConnectionCaps:
    """Concurrent connections, in total and per address: ``admit`` before CONNECT is read,
    ``release`` when the socket is done (only for admitted ones)."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self.open = 0
        self._by_address: Counter[str] = Counter()

    def admit(self, address: str) -> str | None:
        """Count the connection in and return None, or return why it is refused (not counted)."""
        if self.open >= self.total:
            return "over the connection cap"
        if self._by_address[address] >= self.per_address:
            return "over the per-address cap"
        self.open += 1
        self._by_address[address] += 1
        return None

    def release(self, address: str) -> None:
        self.open -= 1
        left = self._by_address[address] - 1
        if left > 0:
            self._by_address[address] = left
        else:
            del self._by_address[address]

    def of(self, address: str) -> int:
        return self._by_address.get(address, 0)


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    delay: float = 0.0
    blocked_until: float = 0.0


class LoginThrottle:
    """Per-address back-off after failed CONNECTs.

    From the ``threshold``-th failed login of an address on (each within ``window`` s of the one
    before), every failure blocks the address for ``backoff`` s, doubling each time up to
    ``max_backoff``. A blocked address's sockets are closed unread, good credentials or not
    (otherwise a block would not slow down guessing); an address with no failure for ``window`` s
    starts over. Connections already up are never touched.
    """

    def __init__(self, threshold: int, window: float, backoff: float, max_backoff: float) -> None:
        self.threshold = threshold
        self.window = window
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._entries: dict[str, _Failures] = {}
        self._pruned_at_size = 0

    def blocked(self, address: str, now: float) -> bool:
        entry = self._entries.get(address)
        return entry is not None and now < entry.blocked_until

    def failed(self, address: str, now: float) -> None:
        """Record a refused login from ``address``."""
        entry = self._entries.get(address)
        if entry is None or now - entry.last >= self.window:
            entry = self._entries[address] = _Failures()
        entry.count += 1
        entry.last = now
        if entry.count >= self.threshold:
            entry.delay = self.backoff if not entry.delay else min(self.max_backoff, entry.delay * 2)
            entry.blocked_until = now + entry.delay
        if len(self._entries) > 2 * self._pruned_at_size + 1024:
            self.prune(now)

    def prune(self, now: float) -> None:
        """Forget addresses that are neither blocked nor recently failed (bounds memory)."""
        self._entries = {
            address: entry
            for address, entry in self._entries.items()
            if now - entry.last < self.window or now < entry.blocked_until
        }
        self._pruned_at_size = len(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class RefusalSummary:
    """Refused connections, counted instead of logged one by one: ``summary`` drains the counts
    into one line (the broker writes it at most once per interval)."""

    def __init__(self, top: int = 5) -> None:
        self._top = top
        self._by_address: Counter[str] = Counter()
        self._by_reason: Counter[str] = Counter()
        self._since: float | None = None

    def note(self, address: str, reason: str, now: float) -> bool:
        """Count one refusal; True if it is the first since the last summary."""
        first = self._since is None
        if first:
            self._since = now
        self._by_address[address] += 1
        self._by_reason[reason] += 1
        return first

    def summary(self, now: float) -> str | None:
        """One line for everything noted since the last call, or None if nothing was."""
        if self._since is None:
            return None
        total = sum(self._by_reason.values())
        reasons = ", ".join(f"{reason} {n}" for reason, n in self._by_reason.most_common())
        top = ", ".join(f"{address} ({n})" for address, n in self._by_address.most_common(self._top))
        addresses = len(self._by_address)
        line = (
            f"refused {total} connection{'s' if total != 1 else ''} from {addresses}"
            f" address{'es' if addresses != 1 else ''} in the last {now - self._since:.0f} s"
            f" ({reasons}); top: {top}"
        )
        self._by_address.clear()
        self._by_reason.clear()
        self._since = None
        return line
