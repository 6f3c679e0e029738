"""The gateway's limits at the edge: SSE connections in total and per client address, sign-in
attempts per address, and the time a request may take (``Budget``). Each refusal is counted; nothing
is queued behind a limit.

A connection is admitted and counted in one synchronous step on the event loop, before its response
starts, so a burst of connects cannot all pass a check made before any of them subscribed; it is
released when its stream ends, however it ends.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send


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


class Budget:
    """ASGI middleware: a request under one of ``prefixes`` answers within ``budget_s``. When its
    response has not started by then (the store does not answer: a paused server, a lost network),
    the client gets a 503 with Retry-After at once, and the request's own work is cancelled in the
    background (``abandon``), however long its Redis command takes to give up; whatever it sends
    later is dropped. ``on_timeout`` counts it."""

    def __init__(
        self,
        app: ASGIApp,
        budget_s: float,
        prefixes: tuple[str, ...],
        on_timeout: Callable[[str], None],
        abandon: Callable[[asyncio.Task[None]], Awaitable[None]],
    ) -> None:
        self.app = app
        self.budget_s = budget_s
        self.prefixes = prefixes
        self.on_timeout = on_timeout
        self.abandon = abandon
        self._abandoned: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        started = late = False

        async def guarded(message: Message) -> None:
            nonlocal started
            if late:
                return  # the 503 went out instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        work = asyncio.ensure_future(self.app(scope, receive, guarded))
        done, _ = await asyncio.wait([work], timeout=self.budget_s)
        if work in done or started:
            await work  # answered in time (or answering: a large body going out in slices)
            return
        late = True
        self.on_timeout(scope["path"])
        body = b'{"detail":"the store did not answer in time; retry"}'
        headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        cleanup = asyncio.ensure_future(self.abandon(work))
        self._abandoned.add(cleanup)
        cleanup.add_done_callback(self._abandoned.discard)
