"""The whole topology in one process: every agent's runtime as a task on one event loop.

Used by replay/export and by tests: it runs the same runtimes `marketswarm run` starts as processes,
and knows when everything is done (every group has read everything and acknowledged it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from redis.exceptions import RedisClusterException, RedisError

from marketswarm.agents import catalog
from marketswarm.topology.agent import AgentSpec
from marketswarm.topology.connections import create_redis
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.observe import backlog
from marketswarm.topology.runtime import Runtime
from marketswarm.topology.settings import Settings

IDLE_POLL_S = 0.05
# Idle must hold for this many consecutive polls: a group can look drained between a commit upstream
# and the downstream read.
IDLE_CONFIRMATIONS = 3


async def _drain(
    url: str,
    settings: Settings,
    specs: Sequence[AgentSpec],
    underlyings: Sequence[str],
    metrics: Metrics,
    deadline: float,
    progress: Callable[[int], None] | None,
) -> None:
    """Run ``specs`` until every one of their groups has read and acked everything, then stop them."""
    stop = asyncio.Event()
    clients = [create_redis(url, settings.block_ms) for _ in specs]
    runtimes = [Runtime(spec, settings, c, metrics, stop=stop) for spec, c in zip(specs, clients, strict=True)]
    tasks = [asyncio.create_task(rt.run(underlyings)) for rt in runtimes]
    probe = create_redis(url)
    loop = asyncio.get_running_loop()
    try:
        calm = 0
        while calm < IDLE_CONFIRMATIONS:
            for t in tasks:
                if t.done() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            try:
                behind: int | None = await backlog(probe, underlyings, specs, missing=1)
            except (RedisError, RedisClusterException, OSError):
                behind = None  # the server is failing over or restarting: not calm, ask again
            if progress is not None and behind is not None:
                progress(behind)
            calm = calm + 1 if behind == 0 else 0
            if loop.time() > deadline:
                raise TimeoutError(f"topology still has {behind} entries to process")
            await asyncio.sleep(IDLE_POLL_S)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in (*clients, probe):
            with contextlib.suppress(Exception):
                await c.aclose()


async def _flush(
    url: str, settings: Settings, specs: Sequence[AgentSpec], underlyings: Sequence[str], metrics: Metrics
) -> int:
    n = 0
    for spec in specs:
        client = create_redis(url)
        try:
            n += await Runtime(spec, settings, client, metrics).flush_all(underlyings)
        finally:
            await client.aclose()
    return n


def stages() -> list[list[AgentSpec]]:
    """The production agents in the order a replay settles them: every agent that reads only its
    input, then those that look other models up (``AgentSpec.looks_up``), once those are final, so
    that what they look up depends on the input alone, together with every agent downstream of them
    (the alerts on their models)."""
    everything = catalog.agents()
    late = {s.name for s in everything if s.looks_up}
    while True:
        written = {w.name for s in everything if s.name in late for w in s.writes}
        more = {s.name for s in everything if s.reads.name in written} - late
        if not more:
            break
        late |= more
    return [[s for s in everything if s.name not in late], [s for s in everything if s.name in late]]


async def settle(
    url: str,
    settings: Settings,
    specs: Sequence[AgentSpec],
    underlyings: Sequence[str],
    *,
    metrics: Metrics | None = None,
    timeout_s: float = 600.0,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Run ``specs`` until they have drained their input, then stop them.

    With ``settings.idle_flush`` off (replays), what they hold back is flushed at the end, calc
    agents first, then publishers, then the rest, each followed by a drain: at a point that depends
    only on the input (every agent has consumed everything), so the published versions are a
    function of the input alone."""
    metrics = metrics or Metrics()
    deadline = asyncio.get_running_loop().time() + timeout_s
    await _drain(url, settings, specs, underlyings, metrics, deadline, progress)
    if settings.idle_flush:
        return
    calcs = [s for s in specs if s.name.startswith("calc.")]
    publishers = [s for s in specs if s.name.startswith("publish.")]
    rest = [s for s in specs if s not in calcs and s not in publishers]
    for holders in (calcs, publishers, rest):
        if holders and await _flush(url, settings, holders, underlyings, metrics):
            await _drain(url, settings, specs, underlyings, metrics, deadline, progress)


async def run_until_idle(
    url: str,
    settings: Settings,
    underlyings: Sequence[str],
    *,
    metrics: Metrics | None = None,
    timeout_s: float = 600.0,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Run every agent until the whole topology has drained its input, then stop them all: stage by
    stage (``stages``), each settled (``settle``)."""
    metrics = metrics or Metrics()
    for stage in stages():
        await settle(url, settings, stage, underlyings, metrics=metrics, timeout_s=timeout_s, progress=progress)
