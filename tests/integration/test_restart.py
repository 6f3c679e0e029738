"""Stateful agents restart exactly where they acked: the staged and diffs streams of a run that was
stopped and restarted equal those of a run that never stopped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from marketswarm.agents import catalog
from marketswarm.agents.calc.strategies import TileCalc
from marketswarm.agents.sources.files import Recorded, write_recorded
from marketswarm.agents.sources.simulated import SimMarket
from marketswarm.schemas import codec
from marketswarm.topology import streams
from marketswarm.topology.connections import create_redis, ensure_group
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.restore import restore
from marketswarm.topology.runtime import Runtime
from marketswarm.topology.settings import Settings

pytestmark = pytest.mark.integration

T0 = 1_763_996_400_000_000_000
SECOND = 1_000_000_000
ST = Settings(underlyings=["SPX"], block_ms=50, idle_flush=False, batch_size=7, calc_bucket_ms=100)


async def run(url: str, name: str, **bounds: float) -> int:
    client = create_redis(url, ST.block_ms)
    try:
        return await Runtime(catalog.by_name(name), ST, client, Metrics(CollectorRegistry())).run(**bounds)  # type: ignore[arg-type]
    finally:
        await client.aclose()


async def payloads(r: aioredis.Redis, key: str) -> list[bytes]:
    return [f[b"data"] for _, f in await r.xrange(key)]


async def recorded_market(r: aioredis.Redis, seed: int, rate: float, chain_interval_s: float, steps: int) -> None:
    """A simulated SPX market, ``steps`` quarter seconds of it, written in event-time order after every
    agent's group exists (so each sees it from the start)."""
    m = SimMarket("SPX", seed, rate, T0, chain_interval_s=chain_interval_s)
    frames = []
    t = T0
    for _ in range(steps):
        t += SECOND // 4
        frames += [Recorded("SPX", f, t, d) for f, d in m.advance(t)]
    for spec in catalog.agents():
        await ensure_group(r, spec.reads.key("SPX"), spec.name)
    await write_recorded(r, frames)


async def test_calc_and_publisher_resume_exactly(redis_url: str, aredis: aioredis.Redis) -> None:
    await recorded_market(aredis, seed=8, rate=600, chain_interval_s=3, steps=30)
    await run(redis_url, "normalize", idle_timeout_s=0.5)
    await run(redis_url, "hydrate", idle_timeout_s=0.5)
    changes = await aredis.xlen(streams.CHANGES.key("SPX"))
    assert changes > 50
    staged_key = streams.STAGED["butterfly"].key("SPX")
    diffs_key = streams.DIFFS["butterfly"].key("SPX")

    async def reset(*names: str) -> None:
        for n in names:
            spec = catalog.by_name(n)
            await aredis.xgroup_setid(spec.reads.key("SPX"), spec.name, "0")
        await aredis.delete(
            staged_key,
            diffs_key,
            streams.calc_checkpoint_key("SPX", "butterfly"),
            streams.model_key("SPX", "butterfly"),
            streams.publish_state_key("SPX", "butterfly"),
        )
        # Deleting the staged stream deleted the publisher's group on it. Without a group nothing
        # guards its entries from retention, and a run slower than a trim interval (a loaded
        # machine) would trim what this test compares.
        for spec in catalog.agents():
            await ensure_group(aredis, spec.reads.key("SPX"), spec.name)

    await run(redis_url, "calc.butterfly", idle_timeout_s=0.5)
    await run(redis_url, "publish.butterfly", idle_timeout_s=0.5)
    straight_staged, straight_diffs = await payloads(aredis, staged_key), await payloads(aredis, diffs_key)
    assert len(straight_staged) > 10 and len(straight_diffs) > 3

    await reset("calc.butterfly", "publish.butterfly")
    for bound in (15, 20, 10):  # stop, restart, stop again...
        await run(redis_url, "calc.butterfly", max_entries=bound, idle_timeout_s=0.5)
    await run(redis_url, "calc.butterfly", idle_timeout_s=0.5)
    for bound in (4, 6):
        await run(redis_url, "publish.butterfly", max_entries=bound, idle_timeout_s=0.5)
    await run(redis_url, "publish.butterfly", idle_timeout_s=0.5)
    assert await payloads(aredis, staged_key) == straight_staged
    assert await payloads(aredis, diffs_key) == straight_diffs


async def test_a_calc_restored_after_live_flushes_holds_what_it_emitted(redis_url: str, aredis: aioredis.Redis) -> None:
    """Live runs flush held buckets on a deadline (not at an entry a restore re-applies): the flush
    points are recorded, so a restored calc knows exactly which values it already sent."""
    await recorded_market(aredis, seed=9, rate=400, chain_interval_s=30, steps=12)
    live = Settings(underlyings=["SPX"], block_ms=20, idle_flush=True, batch_size=3, calc_bucket_ms=5_000)
    client = create_redis(redis_url, live.block_ms)
    try:
        for name in ("normalize", "hydrate", "calc.butterfly"):
            await Runtime(catalog.by_name(name), live, client, Metrics(CollectorRegistry())).run(idle_timeout_s=0.5)
    finally:
        await client.aclose()
    assert await aredis.llen(streams.calc_flushes_key("SPX", "butterfly")) >= 1, "a bucket was flushed on a deadline"
    # What was emitted, replayed from the staged stream.
    values = None
    sent = None
    for _, fields in await aredis.xrange(streams.STAGED["butterfly"].key("SPX")):
        staged = codec.decode(streams.Payload.TILES, fields)
        if staged.reset:
            assert staged.geometry is not None
            values = np.full((staged.geometry.size, staged.cols.k), np.nan)
            sent = np.zeros(len(staged.geometry.contracts), dtype=np.int64)
        assert values is not None and sent is not None
        values[staged.cols.positions()] = staged.cols.values()  # every column: mid, natural, theo, PoP
        sent[staged.cols.contract_positions()] = staged.cols.contract_times()
    calc = TileCalc(live.model_settings, "SPX", "butterfly")
    await restore(aredis, calc, "calc.butterfly", "SPX")
    assert values is not None and not calc.holding()
    np.testing.assert_array_equal(calc.values, values)
    np.testing.assert_array_equal(calc.sent_ts, sent)


def test_an_embedded_server_whose_picked_port_was_taken_starts_on_another(tmp_path: Path) -> None:
    import socket

    from marketswarm.ops.embedded import EmbeddedServer, PortInUseError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: a bind fails, a connect is refused
        port = taken.getsockname()[1]
        server = EmbeddedServer(tmp_path / "a", appendonly=False, record=False)
        server.port = port  # as if the kernel had handed the picked port to someone else meanwhile
        with server:
            assert server.port != port
        # A port the user chose is never changed behind their back.
        with pytest.raises(PortInUseError, match="Address already in use"):
            EmbeddedServer(tmp_path / "b", port=port, appendonly=False, record=False).start()
