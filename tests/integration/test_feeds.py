"""The SSE generators on their own, without HTTP: one model's feed (``model_feed``) and a tab's feeds
(``tab``) over a real topology's published diffs, read as the segments they yield."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from marketswarm.agents.gateway.feeds import FeedSource, ModelCache, model_feed, tab
from marketswarm.agents.gateway.hub import READ_BLOCK_MS, Hub
from marketswarm.agents.gateway.sse import Segment
from marketswarm.topology import streams
from marketswarm.topology.connections import create_redis
from marketswarm.topology.reading import top_version
from tests.integration.test_gateway import Sim, sim  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration

EVENT = re.compile(rb"event: (\w+)\r\n(?:id: (\d+)\r\n)?(?:data: ([\w:]+)\r\n)?data: ")


def events(segments: list[Segment]) -> list[tuple[str, int | None, str | None]]:
    """(event, id, feed) of every event in ``segments``, in order."""
    out = []
    for seg in segments:
        for m in EVENT.finditer(seg.raw):
            out.append((m[1].decode(), int(m[2]) if m[2] else None, m[3].decode() if m[3] else None))
    return out


async def take(gen: AsyncIterator[Segment], n: int, timeout_s: float = 10.0) -> list[Segment]:
    got: list[Segment] = []
    async with asyncio.timeout(timeout_s):
        async for seg in gen:
            got.append(seg)
            if len(got) == n:
                break
    return got


@pytest.fixture
async def source(redis_url: str) -> AsyncIterator[FeedSource]:
    api = create_redis(redis_url)
    blocking = create_redis(redis_url, block_ms=READ_BLOCK_MS)  # as the gateway makes its hub's client
    hub = Hub(blocking)
    try:
        yield FeedSource(api, hub, ModelCache(), max_resume_diffs=50)
    finally:
        await hub.close()
        await api.aclose()
        await blocking.aclose()


async def test_a_feed_from_nothing_starts_with_the_geometry_and_a_snapshot(sim: Sim, source: FeedSource) -> None:  # noqa: F811
    top = await top_version(source.redis, "SPX", "butterfly")
    assert top is not None and top > 3
    gen = model_feed(source, "SPX", "butterfly", -1)
    try:
        first = events(await take(gen, 1))
    finally:
        await gen.aclose()
    assert [e for e, _, _ in first] == ["geometry", "snapshot"]
    assert first[1][1] == top and first[1][2] is None  # the snapshot's id is the version; no feed line


async def test_a_resume_gets_exactly_the_missed_diffs_then_the_live_ones(sim: Sim, source: FeedSource) -> None:  # noqa: F811
    top = await top_version(source.redis, "SPX", "butterfly")
    assert top is not None
    after = top - 3
    gen = model_feed(source, "SPX", "butterfly", after)
    try:
        missed = events(await take(gen, 3))
        assert missed == [("diff", v, None) for v in range(after + 1, top + 1)]
        await sim.advance(1.5)  # new versions arrive live, through the hub
        newest = await top_version(source.redis, "SPX", "butterfly")
        assert newest is not None and newest > top
        live = events(await take(gen, newest - top))
    finally:
        await gen.aclose()
    assert [v for _, v, _ in live] == list(range(top + 1, newest + 1))


async def test_a_resume_too_far_behind_or_past_the_trimmed_history_is_a_snapshot(
    sim: Sim,  # noqa: F811
    source: FeedSource,
) -> None:
    top = await top_version(source.redis, "SPX", "butterfly")
    assert top is not None and top > 4
    few = dataclasses.replace(source, max_resume_diffs=2)
    for src, after in ((few, top - 3), (source, top + 5)):  # more diffs than a resume may send; ahead
        gen = model_feed(src, "SPX", "butterfly", after)
        try:
            got = events(await take(gen, 1))
        finally:
            await gen.aclose()
        assert [e for e, _, _ in got] == ["geometry", "snapshot"], after
    gen = model_feed(few, "SPX", "butterfly", top - 2)  # two behind: resumed
    try:
        assert events(await take(gen, 2)) == [("diff", top - 1, None), ("diff", top, None)]
    finally:
        await gen.aclose()
    await source.redis.xtrim(streams.DIFFS["butterfly"].key("SPX"), maxlen=1)
    gen = model_feed(source, "SPX", "butterfly", top - 2)
    try:
        assert [e for e, _, _ in events(await take(gen, 1))][-1] == "snapshot"
    finally:
        await gen.aclose()


async def test_a_tab_carries_each_feed_tagged_and_each_resumes_after_its_own_version(
    sim: Sim,  # noqa: F811
    source: FeedSource,
) -> None:
    heat = await top_version(source.redis, "SPX", "butterfly")
    gex = await top_version(source.redis, "SPX", "gex")
    assert heat is not None and gex is not None
    feeds = [("SPX", "butterfly", heat - 2), ("SPX", "gex", -1)]
    gen = tab(source, feeds)
    try:
        got: list[tuple[str, int | None, str | None]] = []
        async with asyncio.timeout(10):
            async for seg in gen:
                got += events([seg])
                if sum(1 for _, _, f in got if f == "SPX:butterfly") >= 2 and any(f == "SPX:gex" for _, _, f in got):
                    break
    finally:
        async with asyncio.timeout(10):  # every pump ends, even one whose cancellation redis-py absorbed
            await gen.aclose()  # type: ignore[attr-defined]
    assert all(v is None for _, v, _ in got)  # no id: on a tab's connection
    by_feed: dict[str, list[str]] = {}
    for e, _, f in got:
        assert f is not None
        by_feed.setdefault(f, []).append(e)
    assert by_feed["SPX:butterfly"][:2] == ["diff", "diff"]  # exactly the two missed diffs
    assert by_feed["SPX:gex"][:2] == ["geometry", "snapshot"]


def test_the_event_pattern_reads_both_forms() -> None:
    plain: Any = Segment(b"event: diff\r\nid: 7\r\ndata: {}\r\n\r\n")
    tagged: Any = Segment(b"event: diff\r\ndata: SPX:gex\r\ndata: {}\r\n\r\n")
    assert events([plain, tagged]) == [("diff", 7, None), ("diff", None, "SPX:gex")]
