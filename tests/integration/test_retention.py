"""Bounded for a whole session, and nothing lost in the middle: byte-bounded retention that never trims
what a group still needs, backpressure at the sources, and leases a long step cannot starve."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from marketswarm.agents import catalog
from marketswarm.agents.sources.writer import RawWriter
from marketswarm.schemas import codec
from marketswarm.schemas.codec import RawFormat
from marketswarm.topology import streams
from marketswarm.topology.agent import AgentSpec, Effects, Entry, Processor
from marketswarm.topology.backpressure import Gate
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.retention import Trimmer, plan
from marketswarm.topology.runtime import Runtime
from marketswarm.topology.settings import Settings
from tests.rig.counting import TEST_IN, encode_count, sums_key

pytestmark = pytest.mark.integration

SMALL = replace(TEST_IN, max_bytes=512 * 1024, max_age_s=None)
PAYLOAD = {"key": "k", "n": 1, "pad": "x" * 400}


async def fill(r: aioredis.Redis, key: str, batches: int, n: int) -> None:
    """``batches`` of ``n`` entries a few milliseconds apart: spread over time, as a live stream's are."""
    for _ in range(batches):
        async with r.pipeline(transaction=False) as pipe:
            for _ in range(n):
                pipe.xadd(key, encode_count(PAYLOAD))
            await pipe.execute()
        await asyncio.sleep(0.003)


def test_plan_cuts_by_bytes_and_age_but_not_past_a_group() -> None:
    spec = replace(SMALL, max_bytes=1000, max_age_s=10)
    p = plan(spec, (4001, 0), (5000, 0), [], None)
    assert p.cut == (4001, 0) and p.safe is None  # where the bytes say
    assert plan(spec, None, (30000, 0), [], None).cut == (20000, 0)  # age alone
    assert plan(spec, (25000, 1), (30000, 0), [], None).cut == (25000, 1)  # the further of the two
    held = plan(spec, (4001, 0), (5000, 0), [((2000, 3), (4000, 0)), (None, (3000, 7))], (9000, 0))
    assert held.safe == (2000, 3)  # the oldest entry a group has not acknowledged
    assert plan(spec, (4001, 0), (5000, 0), [(None, (3000, 7))], None).safe == (3000, 8)
    assert plan(replace(spec, versioned=True), None, (30000, 0), [], None).cut is None  # ids are versions


async def test_a_stream_is_trimmed_to_its_bytes_never_past_unacked_entries(aredis: aioredis.Redis) -> None:
    key = SMALL.key("RET")
    metrics = Metrics(CollectorRegistry())
    await aredis.xgroup_create(key, "slow", id="0", mkstream=True)
    await fill(aredis, key, 10, 300)
    trimmer = Trimmer(aredis, metrics, "test")
    assert await trimmer.trim(SMALL, key) == 0, "the group has read nothing: nothing may go"
    assert await aredis.xlen(key) == 3000
    # The group reads and acknowledges the first 2000; the rest stay unread.
    got = await aredis.xreadgroup("slow", "c", {key: ">"}, count=2000)
    await aredis.xack(key, "slow", *[i for i, _ in got[0][1]])
    removed = await trimmer.trim(SMALL, key)
    assert 0 < removed <= 2000  # acknowledged entries only
    assert await aredis.xlen(key) >= 1000
    rest = await aredis.xreadgroup("slow", "c", {key: ">"}, count=5000)
    assert len(rest[0][1]) == 1000
    await aredis.xack(key, "slow", *[i for i, _ in rest[0][1]])
    await trimmer.trim(SMALL, key)
    usage = int(await aredis.execute_command("MEMORY", "USAGE", key))
    assert usage <= SMALL.max_bytes * 1.5, usage  # approximate trimming: whole stream nodes
    assert metrics.retention_held.labels("test", key)._value.get() >= 1


async def test_past_the_hard_bound_the_bound_wins_and_says_so(aredis: aioredis.Redis) -> None:
    key = SMALL.key("HARD")
    metrics = Metrics(CollectorRegistry())
    await aredis.xgroup_create(key, "never", id="0", mkstream=True)
    await fill(aredis, key, 12, 1000)
    assert int(await aredis.execute_command("MEMORY", "USAGE", key)) > 4 * SMALL.max_bytes
    removed = await Trimmer(aredis, metrics, "test").trim(SMALL, key)
    assert removed > 0
    assert metrics.trimmed_unread.labels("test", key)._value.get() > 0


async def test_sources_shed_market_frames_while_agents_are_behind(aredis: aioredis.Redis) -> None:
    key = streams.RAW.key("SHED")
    await aredis.xgroup_create(key, "normalize", id="$", mkstream=True)
    metrics = Metrics(CollectorRegistry())
    writer = RawWriter(aredis, metrics, "test", Gate(aredis, max_backlog=5, specs=catalog.agents()))
    ws = [("massive.ws", b'[{"ev":"Q"},{"ev":"Q"}]')] * 10
    assert len(await writer.write("SHED", ws, time.time_ns())) == 10  # the backlog was 0 when checked
    await asyncio.sleep(0.3)  # the gate reads the backlog at most every 0.25 s
    ids = await writer.write("SHED", [*ws, ("massive.rest.chain", b"[]")], time.time_ns())
    assert len(ids) == 1, "only the chain snapshot goes through while 10 entries wait"
    assert metrics.shed.labels("test", key)._value.get() == 10
    assert metrics.shed_events.labels("test", key)._value.get() == 20


class Slow(Processor):
    """A stateful step that holds the event loop longer than a renewal interval (a third of the lease)
    but less than half the lease: busy, not wedged. On consumer ``wedged`` the first batch blocks
    for ``WEDGE_S``, far past the lease: a step that never returns, as far as anyone can tell."""

    def __init__(self, settings: Settings, u: str) -> None:
        self.key = sums_key(u)
        self.step_s = {"wedged": WEDGE_S, "busy": 1.5}.get(settings.consumer, 0.0)

    def process(self, batch: Sequence[Entry]) -> Effects:
        time.sleep(self.step_s)  # CPU-bound, as far as the event loop is concerned
        if self.step_s == WEDGE_S:
            self.step_s = 0.0
        return Effects(commands=[("HINCRBY", self.key, "n", len(batch))])


WEDGE_S = 4.0


async def test_a_long_step_does_not_lose_its_lease(redis_url: str, aredis: aioredis.Redis) -> None:
    spec = AgentSpec(name="slow", reads=TEST_IN, writes=(), make=Slow, stateful=True)
    # Renewals every 1.17 s from the keeper's thread; each step holds the loop 1.5 s (< half the lease).
    st = Settings(underlyings=["LEASE"], consumer="busy", block_ms=50, lease_ttl_ms=3500, heartbeat_ttl_s=2)
    key = TEST_IN.key("LEASE")
    await aredis.xgroup_create(key, "slow", id="0", mkstream=True)
    for _ in range(3):
        await aredis.xadd(key, encode_count({"key": "k", "n": 1}))
    client: Any = aioredis.Redis.from_url(redis_url)
    try:
        done = await Runtime(spec, st, client, Metrics(CollectorRegistry())).run(max_entries=3, idle_timeout_s=5)
    finally:
        await client.aclose()
    assert done == 3
    assert await aredis.hget(sums_key("LEASE"), "n") == b"3"
    # One token was ever handed out: the lease never lapsed while the step ran.
    assert await aredis.get(streams.lease_token_key("LEASE", "slow")) == b"1"


async def test_a_wedged_step_hands_its_lease_to_a_standby_and_is_fenced(redis_url: str, aredis: aioredis.Redis) -> None:
    """A step blocks its loop past the lease: the keeper stops renewing, a standby takes the lease
    with a new token and commits the entry; the wedged replica's commit, when it wakes, is refused."""
    spec = AgentSpec(name="slow", reads=TEST_IN, writes=(), make=Slow, stateful=True)
    base = Settings(underlyings=["WEDGE"], block_ms=50, lease_ttl_ms=800, heartbeat_ttl_s=2, min_idle_ms=100)
    key = TEST_IN.key("WEDGE")
    await aredis.xgroup_create(key, "slow", id="0", mkstream=True)
    await aredis.xadd(key, encode_count({"key": "k", "n": 1}))

    def wedged() -> int:
        async def main() -> int:
            client: Any = aioredis.Redis.from_url(redis_url)
            try:
                rt = Runtime(spec, base.model_copy(update={"consumer": "wedged"}), client, Metrics(CollectorRegistry()))
                return await rt.run(idle_timeout_s=WEDGE_S + 2)
            finally:
                await client.aclose()

        return asyncio.run(main())  # its own thread and loop: its sleep blocks it, not the standby

    blocked = asyncio.create_task(asyncio.to_thread(wedged))
    lease = streams.lease_key("WEDGE", "slow")
    deadline = time.monotonic() + 5
    while (await aredis.get(lease) or b"").split(b":")[0] != b"wedged":
        assert time.monotonic() < deadline, "the wedged replica never took the lease"
        await asyncio.sleep(0.02)
    wedged_at = time.monotonic()
    client: Any = aioredis.Redis.from_url(redis_url)
    try:
        standby = Runtime(spec, base.model_copy(update={"consumer": "standby"}), client, Metrics(CollectorRegistry()))
        done = await standby.run(max_entries=1, idle_timeout_s=WEDGE_S)
        took_over_s = time.monotonic() - wedged_at
    finally:
        await client.aclose()
    assert done == 1
    # Within the stall threshold (half the lease) + the lease + the standby's step and polling.
    assert took_over_s < WEDGE_S, f"the standby took over only after {took_over_s:.1f} s"
    assert await blocked == 0, "the wedged replica woke and committed with its old token"
    assert await aredis.hget(sums_key("WEDGE"), "n") == b"1", "the fenced replica's commit went through"
    assert await aredis.xpending(key, "slow") == {"pending": 0, "min": None, "max": None, "consumers": []}


async def test_a_stream_of_mixed_entry_sizes_stays_within_its_byte_bound(aredis: aioredis.Redis) -> None:
    """Frames from 100 B to 2 MB, ten times the raw stream's bound in all, through a source's writer and
    gate, while a group reads them: measured exactly after every write, the stream never exceeds its
    bound by more than 10 %; the metric says the exact size; the group reads every frame written."""
    u = "MIXED"
    key, bound = streams.RAW.key(u), streams.RAW.max_bytes
    await aredis.xgroup_create(key, "normalize", id="0", mkstream=True)
    metrics = Metrics(CollectorRegistry())
    gate = Gate(aredis, max_backlog=2000, specs=[catalog.by_name("normalize")])
    writer = RawWriter(aredis, metrics, "test", gate)
    rng = random.Random(5)
    written: set[bytes] = set()
    read: set[bytes] = set()
    done = asyncio.Event()

    async def group() -> None:
        while not (done.is_set() and read >= written):
            got = await aredis.xreadgroup("normalize", "c", {key: ">"}, count=20, block=20)
            ids = [i for i, _ in got[0][1]] if got else []
            if ids:
                read.update(ids)
                await aredis.xack(key, "normalize", *ids)

    reader = asyncio.create_task(group())
    total, peak = 0, 0
    while total < 10 * bound:
        size = int(math.exp(rng.uniform(math.log(100), math.log(2 * streams.MiB))))
        frame = rng.randbytes(size)
        written.update(await writer.write(u, [(RawFormat.WS, frame)], time.time_ns()))
        total += size
        peak = max(peak, int(await aredis.execute_command("MEMORY", "USAGE", key, "SAMPLES", 0)))
    done.set()
    await asyncio.wait_for(reader, 60)
    assert peak <= 1.1 * bound, f"{peak / streams.MiB:.1f} MiB against a bound of {bound / streams.MiB:.0f} MiB"
    assert read >= written, f"{len(written - read)} frames written were never read"
    assert metrics.trimmed.labels("source.test", key)._value.get() > 0
    assert metrics.trimmed_unread.labels("source.test", key)._value.get() == 0
    await writer.trimmer.trim(streams.RAW, key)
    exact = int(await aredis.execute_command("MEMORY", "USAGE", key, "SAMPLES", 0))
    assert metrics.stream_memory.labels(key)._value.get() == exact


async def test_a_frame_over_the_maximum_is_rejected_at_the_source_and_not_stored(aredis: aioredis.Redis) -> None:
    metrics = Metrics(CollectorRegistry())
    writer = RawWriter(aredis, metrics, "test", max_frame_bytes=64 * 1024)
    big, small = b"[" + b" " * (64 * 1024) + b"]", b"[]"
    ids = await writer.write("BIG", [(RawFormat.WS, big), (RawFormat.WS, small)], time.time_ns())
    assert len(ids) == 1 and await aredis.xlen(streams.RAW.key("BIG")) == 1
    ((_, fields),) = await aredis.xrange(streams.REJECTS.key("BIG"))
    reject = codec.decode(streams.Payload.REJECT, fields)
    assert reject.reason == "oversized" and "65538 bytes > max_frame_bytes 65536" in reject.detail
    assert metrics.rejects.labels("source.test", streams.REJECTS.key("BIG"), "oversized")._value.get() == 1


async def test_a_source_sheds_while_a_group_holds_its_stream_over_the_bound(aredis: aioredis.Redis) -> None:
    """A group that reads nothing: the raw stream fills to its bound and no further (the source sheds,
    counted; nothing unread is trimmed); once the group has read it all, frames go through again."""
    u = "HELD"
    key, bound = streams.RAW.key(u), streams.RAW.max_bytes
    await aredis.xgroup_create(key, "normalize", id="0", mkstream=True)
    metrics = Metrics(CollectorRegistry())
    writer = RawWriter(aredis, metrics, "test", Gate(aredis, max_backlog=0, specs=[]))  # the entry count ungated
    frame = (RawFormat.WS, b"x" * streams.MiB)
    for _ in range(2 * bound // streams.MiB):
        await writer.write(u, [frame], time.time_ns())
    assert metrics.shed.labels("test", key)._value.get() > 0
    assert metrics.trimmed_unread.labels("test", key)._value.get() == 0
    assert int(await aredis.execute_command("MEMORY", "USAGE", key, "SAMPLES", 0)) <= 1.1 * bound
    while got := await aredis.xreadgroup("normalize", "c", {key: ">"}, count=100):
        await aredis.xack(key, "normalize", *[i for i, _ in got[0][1]])
    await asyncio.sleep(1.1)  # the next trim, at most a second after the last
    assert len(await writer.write(u, [frame], time.time_ns())) == 1, "still shedding after the group caught up"
