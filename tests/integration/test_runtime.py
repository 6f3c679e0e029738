"""The agent runtime against a real server: batches, atomic commit, isolation, reclaim, dead letters."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from marketswarm.topology import streams
from marketswarm.topology.connections import create_redis, ensure_group
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.runtime import Runtime
from marketswarm.topology.settings import Settings
from tests.rig.counting import COUNT, TEST_IN, encode_count, sums_key

pytestmark = pytest.mark.integration

U = "T1"
KEY = TEST_IN.key(U)


def settings(**kw: object) -> Settings:
    base: dict[str, object] = {
        "underlyings": [U],
        "consumer": "c1",
        "batch_size": 100,
        "block_ms": 100,
        "min_idle_ms": 100,
        "claim_interval_ms": 50,
        "max_deliveries": 2,
        "shutdown_grace_s": 5,
    }
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


async def produce(r: aioredis.Redis, items: list[dict[str, object]]) -> list[str]:
    async with r.pipeline(transaction=False) as pipe:
        for item in items:
            pipe.xadd(KEY, encode_count(item))
        ids = await pipe.execute()
    return [i.decode() for i in ids]


async def sums(r: aioredis.Redis) -> dict[str, int]:
    raw = await r.hgetall(sums_key(U))
    return {k.decode(): int(v) for k, v in raw.items()}


async def run_counter(url: str, st: Settings, **bounds: float) -> tuple[int, Metrics]:
    client = create_redis(url, st.block_ms)
    metrics = Metrics(CollectorRegistry())
    try:
        n = await Runtime(COUNT, st, client, metrics).run(**bounds)  # type: ignore[arg-type]
    finally:
        await client.aclose()
    return n, metrics


async def test_counts_every_entry_once(redis_url: str, aredis: aioredis.Redis) -> None:
    rng = random.Random(1)
    items = [{"key": f"k{rng.randrange(10)}", "n": rng.randrange(1, 10)} for _ in range(2500)]
    await ensure_group(aredis, KEY, COUNT.name)
    await produce(aredis, items)
    n, metrics = await run_counter(redis_url, settings(batch_size=300), max_entries=2500)
    assert n == 2500
    expected: dict[str, int] = {}
    for it in items:
        expected[str(it["key"])] = expected.get(str(it["key"]), 0) + int(it["n"])  # type: ignore[call-overload]
    assert await sums(aredis) == expected
    info = await aredis.xinfo_groups(KEY)
    assert info[0]["pending"] == 0
    assert metrics.entries_acked.labels("count", KEY)._value.get() == 2500


async def test_poison_is_isolated_then_dead_lettered(redis_url: str, aredis: aioredis.Redis) -> None:
    await ensure_group(aredis, KEY, COUNT.name)
    items: list[dict[str, object]] = [{"key": "a", "n": 1} for _ in range(50)]
    items[20] = {"key": "a", "n": 1000, "poison": True}
    ids = await produce(aredis, items)
    # An undecodable entry: raw bytes with no kind/v/data.
    bad_id = (await aredis.xadd(KEY, {"garbage": b"\xff\x00not json"})).decode()
    n, metrics = await run_counter(redis_url, settings(), idle_timeout_s=1.5)
    # The other 49 committed at once; the two bad entries went to the DLQ after max_deliveries.
    assert (await sums(aredis)) == {"a": 49}
    dlq = await aredis.xrange(streams.dlq_key(KEY))
    by_id = {fields[b"id"].decode(): fields for _, fields in dlq}
    assert set(by_id) == {ids[20], bad_id}
    assert b"PoisonError" in by_id[ids[20]][b"error"]
    assert b"undecodable" in by_id[bad_id][b"error"]
    assert int(by_id[ids[20]][b"deliveries"]) == 3
    assert by_id[bad_id][b"orig.garbage"] == b"\xff\x00not json"
    assert (await aredis.xinfo_groups(KEY))[0]["pending"] == 0
    assert metrics.dead_letters.labels("count", KEY)._value.get() == 2
    assert metrics.step_failures.labels("count", KEY)._value.get() >= 1
    assert n == 51


async def test_reclaims_entries_of_a_dead_consumer(redis_url: str, aredis: aioredis.Redis) -> None:
    await ensure_group(aredis, KEY, COUNT.name)
    await produce(aredis, [{"key": "x", "n": 2} for _ in range(30)])
    # A consumer that read and died: its entries sit in the PEL.
    got = await aredis.xreadgroup(COUNT.name, "ghost", {KEY: ">"}, count=30)
    assert len(got[0][1]) == 30
    # More than a batch's worth of pending entries exercises XAUTOCLAIM's cursor.
    n, metrics = await run_counter(redis_url, settings(batch_size=7), idle_timeout_s=1.0)
    assert (await sums(aredis)) == {"x": 60}
    assert (await aredis.xinfo_groups(KEY))[0]["pending"] == 0
    assert metrics.reclaimed.labels("count", KEY)._value.get() == 30


async def test_own_pending_entries_are_drained_first(redis_url: str, aredis: aioredis.Redis) -> None:
    await ensure_group(aredis, KEY, COUNT.name)
    await produce(aredis, [{"key": "y", "n": 1} for _ in range(10)])
    await aredis.xreadgroup(COUNT.name, "c1", {KEY: ">"}, count=10)  # "c1" crashed after reading
    # Long min_idle: nothing is reclaimed; only the drain at start can find them.
    n, _ = await run_counter(redis_url, settings(min_idle_ms=600_000, claim_interval_ms=600_000), max_entries=10)
    assert n == 10
    assert (await sums(aredis)) == {"y": 10}


async def test_blocking_read_longer_than_default_timeout_and_heartbeat(redis_url: str, aredis: aioredis.Redis) -> None:
    st = settings(block_ms=3000, heartbeat_ttl_s=5)
    stop = asyncio.Event()
    client = create_redis(redis_url, st.block_ms)
    metrics = Metrics(CollectorRegistry())
    runtime = Runtime(COUNT, st, client, metrics, stop=stop)
    task = asyncio.create_task(runtime.run())
    await asyncio.sleep(3.5)  # one full BLOCK elapsed without input
    assert await aredis.exists(streams.heartbeat_key("count", "c1"))
    await produce(aredis, [{"key": "z", "n": 5}])
    for _ in range(50):
        if await sums(aredis):
            break
        await asyncio.sleep(0.05)
    stop.set()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.wait_for(task, 5)
    assert loop.time() - t0 < 1.0, "a blocked read must not delay shutdown"
    await client.aclose()
    assert (await sums(aredis)) == {"z": 5}
    assert metrics.redis_errors.labels("count", KEY)._value.get() == 0
