"""Retrying an operation through a passing failure (a server restarting, a failover, a resharding):
one helper, so that every retry in the code pauses, reports and gives up the same way.

``pauses`` says how long to wait before each new attempt and when to give up; ``retried`` runs the
attempts. The reconnect policies (the live source's jittered reconnects, the supervisor's restarts)
and the loops that pause after an error before reading again are schedules of their own, not retries
of one operation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from marketswarm.topology.stopping import pause

T = TypeVar("T")


def pauses(first_s: float, max_s: float, *, for_s: float | None = None) -> Iterator[float]:
    """Waits between attempts: ``first_s``, doubling up to ``max_s`` (all the same when they are equal).
    With ``for_s`` they end that long after the first is asked for (the caller then gives up)."""
    deadline = None if for_s is None else time.monotonic() + for_s
    wait_s = first_s
    while deadline is None or time.monotonic() <= deadline:
        yield wait_s
        wait_s = min(wait_s * 2, max_s)


async def retried(
    attempt: Callable[[], Awaitable[T]],
    *,
    retry_if: Callable[[Exception], bool],
    waits: Iterator[float],
    failed: Callable[[Exception, int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> T:
    """``await attempt()`` until it succeeds. A failure ``retry_if`` accepts is told to ``failed`` (with
    the number of failures in a row, 1 for the first of an outage) and tried again after the next of
    ``waits``; when they run out, or ``stop`` is set, that failure is raised, as is any other at once."""
    failures = 0
    while True:
        try:
            return await attempt()
        except Exception as exc:
            wait_s = next(waits, None) if retry_if(exc) else None
            if wait_s is None:
                raise
            failures += 1
            if failed is not None:
                failed(exc, failures)
            if stop is None:
                await asyncio.sleep(wait_s)
            elif stop.is_set() or await pause(stop, wait_s):
                raise
