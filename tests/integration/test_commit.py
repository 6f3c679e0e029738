"""The commit script against a real server: an effect that fails never acknowledges its batch.

Before the commit was one script, a failing command inside MULTI/EXEC (a WRONGTYPE, a script error)
still let the XACK queued after it commit: the entry was acknowledged and its effect lost.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from marketswarm.agents.hydrate.hydrator import HYDRATE, Hydrator
from marketswarm.schemas import codec
from marketswarm.schemas.events import EventBatch, Quote
from marketswarm.topology import streams
from marketswarm.topology.agent import Effects, Entry, Output
from marketswarm.topology.commit import Committer, ConflictError, EffectError, encode, hash_tag
from marketswarm.topology.connections import create_redis, ensure_group
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.restore import restore
from marketswarm.topology.runtime import Runtime
from marketswarm.topology.settings import Settings
from tests.integration.test_hydrate import T0, chain, contract
from tests.integration.test_runtime import KEY, produce, run_counter, settings, sums
from tests.rig.counting import COUNT, sums_key

pytestmark = pytest.mark.integration


async def pending(r: aioredis.Redis, key: str, group: str) -> int:
    return int((await r.xinfo_groups(key))[0]["pending"])


async def test_failed_effect_leaves_the_batch_pending_then_commits_once(redis_url: str, aredis: aioredis.Redis) -> None:
    await ensure_group(aredis, KEY, COUNT.name)
    await produce(aredis, [{"key": "a", "n": 1} for _ in range(40)])
    await aredis.set(sums_key("T1"), "not a hash")  # every HINCRBY fails with WRONGTYPE
    # No reclaim by idle time: the failed entries stay with this consumer until its next start.
    quiet = settings(max_deliveries=1000, min_idle_ms=600_000)
    _, metrics = await run_counter(redis_url, quiet, idle_timeout_s=1.0)
    assert await pending(aredis, KEY, COUNT.name) == 40  # nothing acknowledged
    assert metrics.entries_acked.labels("count", KEY)._value.get() == 0
    assert metrics.commit_failures.labels("count", KEY)._value.get() >= 1
    errors = await aredis.hgetall(streams.errors_key(KEY))
    assert errors and all(b"WRONGTYPE" in e for e in errors.values())
    await aredis.delete(sums_key("T1"))  # the operator mends the key
    n, _ = await run_counter(redis_url, quiet, max_entries=40)
    assert n == 40
    assert await sums(aredis) == {"a": 40}
    assert await pending(aredis, KEY, COUNT.name) == 0
    assert not await aredis.exists(streams.errors_key(KEY))  # cleared with the XACK


async def test_failed_effect_is_dead_lettered_with_its_reason(redis_url: str, aredis: aioredis.Redis) -> None:
    await ensure_group(aredis, KEY, COUNT.name)
    ids = await produce(aredis, [{"key": "a", "n": 1} for _ in range(3)])
    await aredis.set(sums_key("T1"), "not a hash")
    n, metrics = await run_counter(redis_url, settings(max_deliveries=2), idle_timeout_s=2.0)
    assert n == 3
    dlq = await aredis.xrange(streams.dlq_key(KEY))
    assert sorted(f[b"id"].decode() for _, f in dlq) == sorted(ids)
    assert all(f[b"error"].startswith(b"commit failed: WRONGTYPE") for _, f in dlq)
    assert await pending(aredis, KEY, COUNT.name) == 0
    assert metrics.dead_letters.labels("count", KEY)._value.get() == 3


def hydrator() -> Hydrator:
    return Hydrator(Settings(underlyings=["SPX"]), "SPX")


async def test_hydrate_error_mid_script_acks_nothing_and_a_retry_converges(aredis: aioredis.Redis) -> None:
    """The spot key of the wrong type fails the script after the snapshot's admissions were written:
    nothing is acknowledged, and the retry (after the key is mended) equals a clean run."""
    events = streams.EVENTS.key("SPX")
    entry_id = (
        await aredis.xadd(events, codec.encode_events(EventBatch(src="1-0", rx_ns=T0, events=(chain(),))))
    ).decode()
    await ensure_group(aredis, events, HYDRATE.name)
    await aredis.xreadgroup(HYDRATE.name, "c1", {events: ">"})
    commit = Committer(aredis)

    async def attempt() -> list[object]:
        h = hydrator()
        await restore(aredis, h, HYDRATE.name, "SPX")
        entry = Entry(entry_id, EventBatch(src=entry_id, rx_ns=T0, events=(chain(),)))
        return await commit(encode(events, HYDRATE.name, h.process([entry]), [entry_id]))

    await aredis.hset(streams.spot_key("SPX"), "x", "1")
    with pytest.raises(EffectError, match="WRONGTYPE"):
        await attempt()
    assert await pending(aredis, events, HYDRATE.name) == 1
    assert await aredis.xlen(streams.CHANGES.key("SPX")) == 0  # the changes went out with nothing
    await aredis.delete(streams.spot_key("SPX"))
    results = await attempt()
    assert await pending(aredis, events, HYDRATE.name) == 0
    # No rollback: the failed attempt's admissions stayed, and the retry found them equal (C).
    assert [int(x) for x in results[0][:5]] == [1, 0, 12, 0, 0]
    epoch = (await aredis.get(streams.epoch_pointer_key("SPX"))).decode()
    assert results[0][8].decode() == epoch
    assert await aredis.xlen(streams.CHANGES.key("SPX")) == 1
    retried = (await aredis.hgetall(streams.state_key("SPX", epoch)), await aredis.get(streams.spot_key("SPX")))
    # ... and the state equals that of a clean run.
    await aredis.flushall()
    await aredis.xadd(events, codec.encode_events(EventBatch(src="1-0", rx_ns=T0, events=(chain(),))), id=entry_id)
    await ensure_group(aredis, events, HYDRATE.name)
    await aredis.xreadgroup(HYDRATE.name, "c1", {events: ">"})
    assert [int(x) for x in (await attempt())[0][:5]] == [13, 0, 0, 0, 1]
    assert (await aredis.hgetall(streams.state_key("SPX", epoch)), await aredis.get(streams.spot_key("SPX"))) == retried


async def test_hydrate_conflict_is_refused_before_any_write(aredis: aioredis.Redis) -> None:
    events = streams.EVENTS.key("SPX")
    commit = Committer(aredis)
    stale, fresh = hydrator(), hydrator()
    await restore(aredis, stale, HYDRATE.name, "SPX")  # no epoch yet
    snap = Entry("1-0", EventBatch(src="1-0", rx_ns=T0, events=(chain(),)))
    await commit(encode(events, HYDRATE.name, fresh.process([snap]), []))  # another replica promotes
    sym = contract(4700).symbol
    quote = Entry(
        "2-0",
        EventBatch(src="2-0", rx_ns=T0, events=(Quote(symbol=sym, underlying="SPX", ts_ns=T0 + 1, bid=2.0, ask=2.1),)),
    )
    before = await aredis.xlen(streams.CHANGES.key("SPX"))
    with pytest.raises(ConflictError, match="MSCONFLICT"):
        await commit(encode(events, HYDRATE.name, stale.process([quote]), []))
    assert await aredis.xlen(streams.CHANGES.key("SPX")) == before
    await restore(aredis, stale, HYDRATE.name, "SPX")
    results = await commit(encode(events, HYDRATE.name, stale.process([quote]), []))
    assert int(results[0][1]) == 1  # admitted as newer (B)


async def test_runtime_steps_again_after_another_replica_promoted(redis_url: str, aredis: aioredis.Redis) -> None:
    """A hydrate replica that restored before another one promoted an epoch commits its next batch
    after one restore: nothing is lost, nothing fails."""
    events = streams.EVENTS.key("SPX")
    await ensure_group(aredis, events, HYDRATE.name)
    st = Settings(underlyings=["SPX"], consumer="h1", block_ms=100, batch_size=50)
    client = create_redis(redis_url, st.block_ms)
    runtime = Runtime(HYDRATE, st, client, Metrics(CollectorRegistry()))
    task = asyncio.create_task(runtime.run(max_entries=1))
    try:
        await asyncio.sleep(0.5)  # restored (no epoch) and reading
        other = hydrator()
        snap = Entry("1-0", EventBatch(src="1-0", rx_ns=T0, events=(chain(),)))
        await Committer(aredis)(encode(events, HYDRATE.name, other.process([snap]), []))
        sym = contract(4705).symbol
        quote = EventBatch(
            src="", rx_ns=T0, events=(Quote(symbol=sym, underlying="SPX", ts_ns=T0 + 5, bid=3.0, ask=3.2),)
        )
        await aredis.xadd(events, codec.encode_events(quote))
        assert await asyncio.wait_for(task, 10) == 1
    finally:
        await client.aclose()
    assert await pending(aredis, events, HYDRATE.name) == 0
    epoch = (await aredis.get(streams.epoch_pointer_key("SPX"))).decode()
    assert (await aredis.hget(streams.state_key("SPX", epoch), f"{sym}|q")).endswith(b'"bid":3.0,"ask":3.2}')


async def test_lease_is_checked_inside_the_script(aredis: aioredis.Redis) -> None:
    key, lease = streams.CHANGES.key("SPX"), streams.lease_key("SPX", "calc.single")
    await aredis.set(lease, "other:7")
    out = Effects(outputs=[Output(streams.CHANGES, key, {"x": "1"})])
    with pytest.raises(Exception, match="MSLEASE"):
        await Committer(aredis)(encode(key, "calc.single", out, [], lease=lease, token="me:6"))
    assert await aredis.xlen(key) == 0


async def test_explicit_ids_append_once(aredis: aioredis.Redis) -> None:
    key = streams.DIFFS["gex"].key("SPX")
    out = Effects(outputs=[Output(streams.DIFFS["gex"], key, {"x": "1"}, id="7-0")])
    commit = Committer(aredis)
    await commit(encode(key, "p", out, []))
    await commit(encode(key, "p", out, []))  # a retried commit
    assert await aredis.xlen(key) == 1


def test_a_commit_stays_in_one_slot() -> None:
    out = Effects(outputs=[Output(streams.CHANGES, streams.CHANGES.key("NDX"), {"x": "1"})])
    with pytest.raises(ValueError, match="one slot"):
        encode(streams.EVENTS.key("SPX"), "g", out, [])
    assert hash_tag("ms:{SPX}:events.v1") == "SPX" and hash_tag("a{}b") == "a{}b"
