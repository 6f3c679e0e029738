"""Fault soak (make test-all): every agent of the topology runs as its own process and is SIGKILLed at
random moments while a recorded market flows through; once restarted and drained, the exported models
are byte-identical to those of a run nobody disturbed."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from marketswarm.agents import catalog
from marketswarm.agents.sources.files import Recorded, write_recorded
from marketswarm.agents.sources.simulated import SimMarket
from marketswarm.ops import inprocess
from marketswarm.ops.inprocess import run_until_idle
from marketswarm.ops.replay import export_models
from marketswarm.topology import streams
from marketswarm.topology.agent import AgentSpec
from marketswarm.topology.connections import ensure_group
from marketswarm.topology.observe import backlog
from marketswarm.topology.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = 1_763_996_400_000_000_000
SECOND = 1_000_000_000
KILLS = 12
ENV = {
    "MARKETSWARM_UNDERLYINGS": "SPX",
    "MARKETSWARM_IDLE_FLUSH": "false",
    "MARKETSWARM_LEASE_TTL_MS": "1500",
    "MARKETSWARM_MIN_IDLE_MS": "500",
    "MARKETSWARM_CLAIM_INTERVAL_MS": "300",
    "MARKETSWARM_BLOCK_MS": "100",
    "MARKETSWARM_BATCH_SIZE": "20",
    "MARKETSWARM_LOG_LEVEL": "WARNING",
}
ST = Settings(underlyings=["SPX"], idle_flush=False, block_ms=100)


def frames() -> list[Recorded]:
    m = SimMarket("SPX", 17, 1200, T0, chain_interval_s=2)
    out: list[Recorded] = []
    t = T0
    for step in range(40):
        t += SECOND // 4
        if step == 20:
            m.spot *= 1.03  # a new grid, so an epoch switch happens under fire too
        out += [Recorded("SPX", f, t, d) for f, d in m.advance(t)]
    return out


async def load(url: str, recorded: list[Recorded]) -> None:
    r = aioredis.Redis.from_url(url)
    await r.flushall()
    for spec in catalog.agents():
        await ensure_group(r, spec.reads.key("SPX"), spec.name)
    await write_recorded(r, recorded)
    await r.aclose()


async def export(url: str, out: Path) -> dict[str, bytes]:
    r = aioredis.Redis.from_url(url)
    paths = await export_models(r, out, ["SPX"])
    await r.aclose()
    return {p.name: p.read_bytes() for p in paths}


@pytest.mark.timeout(900)
def test_killing_agents_at_random_changes_nothing(redis_url: str, tmp_path: Path) -> None:
    recorded = frames()
    asyncio.run(load(redis_url, recorded))
    asyncio.run(run_until_idle(redis_url, ST, ["SPX"], timeout_s=300))
    clean = asyncio.run(export(redis_url, tmp_path / "clean"))
    assert len(clean) == len(streams.MODELS)

    asyncio.run(load(redis_url, recorded))
    env = dict(os.environ, MARKETSWARM_REDIS_URL=redis_url, **ENV)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # Agents that look other models up run once those are final, as in a replay (inprocess.py).
    stages = inprocess.stages()

    def spawn(name: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "marketswarm.ops", "agent", name], env=env)

    async def drained(specs: list[AgentSpec]) -> None:
        r = aioredis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 300
        calm = 0
        while calm < 5:
            assert time.monotonic() < deadline, "the topology did not drain after the kills"
            calm = calm + 1 if await backlog(r, ["SPX"], specs, missing=1) == 0 else 0
            await asyncio.sleep(0.3)
        await r.aclose()

    procs: dict[str, subprocess.Popen[bytes]] = {}
    rng = random.Random(7)
    try:
        for stage, kills in zip(stages, (KILLS, KILLS // 3), strict=True):
            names = [s.name for s in stage]
            procs.update({n: spawn(n) for n in names})
            for _ in range(kills):
                time.sleep(rng.uniform(0.3, 1.2))
                victim = rng.choice(names)
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait()
                procs[victim] = spawn(victim)
            if stage is stages[0]:
                # What the calcs and publishers hold back is flushed, as a replay does, before the next stage.
                asyncio.run(drained(stage))
                for p in procs.values():
                    p.send_signal(signal.SIGTERM)
                for p in procs.values():
                    p.wait(20)
                asyncio.run(inprocess.settle(redis_url, ST, stage, ["SPX"], timeout_s=300))
        asyncio.run(drained(stages[1]))
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
    # What the killed run still holds back is flushed at the end, as a replay does.
    asyncio.run(run_until_idle(redis_url, ST, ["SPX"], timeout_s=300))
    assert asyncio.run(export(redis_url, tmp_path / "killed")) == clean
