"""The gateway's limits at the edge: SSE connections in total and per client address, and sign-in
attempts per address. Each refusal is counted; nothing is queued behind a limit.

A connection is admitted and counted in one synchronous step on the event loop, before its response
starts, so a burst of connects cannot all pass a check made before any of them subscribed; it is
released when its stream ends, however it ends.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque


class Admission:
    """Open SSE connections, at most ``total`` in all and ``per_address`` from one client address."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self.open = 0
        self.by_address: dict[str, int] = {}

    def admit(self, address: str) -> str | None:
        """Count a new connection from ``address``; or say why it is refused (and count nothing)."""
        if self.open >= self.total:
            return f"{self.total} live connections already; retry later"
        n = self.by_address.get(address, 0)
        if n >= self.per_address:
            return f"{self.per_address} live connections from your address already; close some"
        self.open += 1
        self.by_address[address] = n + 1
        return None

    def release(self, address: str) -> None:
        """A connection from ``address`` ended."""
        self.open -= 1
        n = self.by_address.get(address, 0) - 1
        if n > 0:
            self.by_address[address] = n
        else:
            self.by_address.pop(address, None)


class Attempts:
    """At most ``limit`` attempts per ``window_s`` from one address (a sliding window); the addresses
    remembered are bounded by ``max_addresses``, the least recently seen forgotten first."""

    def __init__(self, limit: int, window_s: float, max_addresses: int = 10_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_addresses = max_addresses
        self.seen: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, address: str, now: float | None = None) -> float | None:
        """Record an attempt from ``address``; None if allowed, else the seconds until one will be."""
        now = time.monotonic() if now is None else now
        times = self.seen.pop(address, None) or deque()
        while times and now - times[0] >= self.window_s:
            times.popleft()
        self.seen[address] = times
        while len(self.seen) > self.max_addresses:
            self.seen.popitem(last=False)
        if len(times) >= self.limit:
            return self.window_s - (now - times[0])
        times.append(now)
        return None
