"""What the day's history costs in Redis: ten minutes of event time of `make run`'s market (its
underlyings at its simulated rate) through every agent, as `marketswarm run` starts them, then the
history streams measured exactly and extrapolated to a 6.5-hour session.

The market is offered as fast as the agents take it (held back while their backlog is over the
sources' own bound), not at its pace: history is keyed by event time, so ten minutes of event time
make the same points and keyframes whatever the wall time they take.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from marketswarm.agents import catalog
from marketswarm.agents.sources.simulated import SimMarket
from marketswarm.agents.sources.writer import RawWriter
from marketswarm.topology import streams
from marketswarm.topology.connections import create_redis
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.observe import backlog
from marketswarm.topology.settings import Settings
from tests.bench.bench import Row
from tests.bench.e2e import _stop, process_groups

MEASURED_S = 600  # event time offered
SESSION_S = 6.5 * 3600
STEP_NS = 250_000_000  # the simulated market's tick
T0 = 1_763_996_400_000_000_000  # Monday 2025-11-24 15:00 UTC: a session's event time
MAX_BACKLOG = Settings().max_backlog


def history_suite(url: str, shared: dict[str, float]) -> list[Row]:
    del shared
    settings = Settings()
    env = {**os.environ, "MARKETSWARM_REDIS_URL": url, "MARKETSWARM_LOG_LEVEL": "WARNING"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    exe = shutil.which("marketswarm", path=str(Path(sys.executable).parent)) or "marketswarm"
    asyncio.run(_flush(url))
    procs = [subprocess.Popen([exe, "agent", *group], env=env) for group in process_groups()]
    try:
        return asyncio.run(_measure(url, list(settings.underlyings), settings.sim_rate))
    finally:
        _stop(procs)


async def _below(r: Any, underlyings: list[str], entries: int) -> None:
    """Wait until the agents of ``underlyings`` have fewer than ``entries`` unread or unacknowledged."""
    specs = catalog.agents()
    while True:
        if await backlog(r, underlyings, specs) < entries:
            return
        await asyncio.sleep(0.05)


async def _flush(url: str) -> None:
    r = create_redis(url)
    await r.flushall()  # the suites before this one leave history of their own
    await r.aclose()


async def _measure(url: str, underlyings: list[str], rate: float) -> list[Row]:
    r = create_redis(url, block_ms=1000)
    writer = RawWriter(r, Metrics(CollectorRegistry()), "bench")
    markets = {u: SimMarket(u, 7, rate, T0) for u in underlyings}
    started = time.monotonic()
    t = T0
    while t < T0 + MEASURED_S * 1_000_000_000:
        t += STEP_NS
        for u, m in markets.items():
            await writer.write(u, m.advance(t), t)
        if (t - T0) % 1_000_000_000 == 0:
            await _below(r, underlyings, MAX_BACKLOG)
    await _below(r, underlyings, 1)
    await asyncio.sleep(2.0)  # the last versions' commits and idle flushes
    wall = time.monotonic() - started

    async def usage(specs_by_model: dict[str, streams.StreamSpec]) -> float:
        total = 0
        for u in underlyings:
            for spec in specs_by_model.values():
                total += int(await r.execute_command("MEMORY", "USAGE", spec.key(u), "SAMPLES", 0) or 0)
        return float(total)

    per_session = SESSION_S / MEASURED_S
    levels, keyframes = await usage(streams.LEVELS), await usage(streams.KEYFRAMES)
    bounded = await usage(streams.CHECKPOINTS) + await usage(streams.GEOMETRIES)
    points = sum([await r.xlen(s.key(u)) for u in underlyings for s in streams.LEVELS.values()])
    await r.aclose()
    what = f"{len(underlyings)} underlyings at {rate:,.0f} events/s each, {MEASURED_S // 60} min of event time"
    return [
        Row(
            "history",
            f"history bytes per 6.5 h session (levels + keyframes), from {what} (offered in {wall:.0f} s)",
            (levels + keyframes) * per_session,
            "B",
            key="history_bytes_per_day",
        ),
        Row("history", "  of which level points", levels * per_session, "B"),
        Row(
            "history",
            f"  level points per second of event time, {len(underlyings)} underlyings",
            points / MEASURED_S,
            "/s",
        ),
        Row("history", "  of which keyframes", keyframes * per_session, "B"),
        Row("history", "recent checkpoints and geometries (bounded, not per day)", bounded, "B"),
    ]
