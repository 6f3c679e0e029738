"""The one retry helper: the waits it takes, when it gives up, and what it tells."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from marketswarm.topology.retrying import pauses, retried


def test_pauses_double_up_to_their_maximum_and_end_after_their_time() -> None:
    assert list(itertools.islice(pauses(0.25, 5.0), 7)) == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert list(itertools.islice(pauses(0.5, 0.5), 3)) == [0.5, 0.5, 0.5]
    waits = pauses(0.01, 0.01, for_s=0.05)
    started = time.monotonic()
    taken = 0
    for _ in waits:
        taken += 1
        time.sleep(0.01)
    assert 2 <= taken <= 7 and time.monotonic() - started < 1.0


class Flaky:
    def __init__(self, failures: int, exc: Exception) -> None:
        self.failures, self.exc, self.calls = failures, exc, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "done"


async def test_a_passing_failure_is_retried_and_told_once_per_failure() -> None:
    told: list[int] = []
    flaky = Flaky(3, ConnectionError("gone"))
    got = await retried(
        flaky, retry_if=lambda e: isinstance(e, ConnectionError), waits=pauses(0, 0), failed=lambda _, n: told.append(n)
    )
    assert got == "done" and flaky.calls == 4 and told == [1, 2, 3]


async def test_it_gives_up_when_the_waits_run_out_and_raises_other_failures_at_once() -> None:
    flaky = Flaky(10, ConnectionError("gone"))
    with pytest.raises(ConnectionError):
        await retried(flaky, retry_if=lambda e: True, waits=iter([0.0, 0.0]))
    assert flaky.calls == 3
    other = Flaky(10, ValueError("a bug"))
    with pytest.raises(ValueError):
        await retried(other, retry_if=lambda e: isinstance(e, ConnectionError), waits=pauses(0, 0))
    assert other.calls == 1


async def test_a_stop_during_a_wait_ends_the_retries_with_the_failure() -> None:
    stop = asyncio.Event()
    flaky = Flaky(100, ConnectionError("gone"))
    asyncio.get_running_loop().call_later(0.05, stop.set)
    with pytest.raises(ConnectionError):
        async with asyncio.timeout(5):
            await retried(flaky, retry_if=lambda e: True, waits=pauses(0.02, 0.02), stop=stop)
    assert 2 <= flaky.calls < 10
