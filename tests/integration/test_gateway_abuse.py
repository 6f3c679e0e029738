"""The gateway under a hostile network: 300 concurrent abusive clients cost legitimate ones nothing."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest

from tests.integration.test_gateway import Sim, SseClient, current_version, gateway_at, gateway_proc, sim  # noqa: F401

pytestmark = pytest.mark.integration

BAD_IDS = ["999999999999", "²", "9" * 10_240, str(2**64 + 1), "-5", "12abc"]


async def hostile_sse(http: httpx.AsyncClient, url: str, last_id: str | None, stop: asyncio.Event) -> int:
    """Connects, reads everything until told to stop (then at once, not at the next keepalive);
    returns the status."""
    headers = {"Last-Event-ID": last_id.encode()} if last_id is not None else {}  # bytes: "²" is not ASCII
    async with http.stream("GET", url, headers=headers) as resp:
        if resp.status_code != 200:
            return resp.status_code
        reader = asyncio.ensure_future(drain(resp))
        await stop.wait()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await reader
    return 200


async def drain(resp: httpx.Response) -> None:
    async for _ in resp.aiter_raw():
        pass


async def hammer(http: httpx.AsyncClient, url: str, stop: asyncio.Event) -> set[int]:
    seen = set()
    while not stop.is_set():
        seen.add((await http.get(url)).status_code)
    return seen


async def test_hostile_clients_leave_rest_and_live_sse_untouched(sim: Sim, gateway_proc: Any) -> None:  # noqa: F811
    base, _ = gateway_proc
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60), limits=limits) as http:
        hostile: list[asyncio.Task[Any]] = []
        for i in range(100):  # health and metrics scraped flat out
            hostile.append(asyncio.create_task(hammer(http, base + ("/metrics" if i % 2 else "/readyz"), stop)))
        for i in range(100):  # feeds of made-up underlyings
            url = f"{base}/sse/heatmap/butterfly?underlying=FAKE{i}"
            hostile.append(asyncio.create_task(hostile_sse(http, url, None, stop)))
        for i in range(100):  # resume ids meant to capture or break a feed
            url = f"{base}/sse/heatmap/single?underlying=SPX"
            hostile.append(asyncio.create_task(hostile_sse(http, url, BAD_IDS[i % len(BAD_IDS)], stop)))
        await asyncio.sleep(2)  # the abuse is under way

        top = await current_version(base, "single")
        legit = [SseClient() for _ in range(10)]
        reads = [
            asyncio.create_task(c.read(http, base + "/sse/heatmap/single?underlying=SPX", top + 3, timeout=90))
            for c in legit
        ]
        rest = []
        for _ in range(20):
            rest += [(await http.get(base + path)).status_code for path in ("/api/models/SPX/single", "/api/gex/SPX")]
        await sim.advance(2)  # live diffs while every client is connected
        await asyncio.gather(*reads)
        stop.set()
        results = await asyncio.gather(*hostile, return_exceptions=True)
    assert set(rest) == {200}, rest  # authenticated-style REST stays 200 under the flood
    for c in legit:
        assert c.events[:2] == ["geometry", "snapshot"] and "diff" in c.events  # snapshot, then live diffs
        assert c.last_id is not None and int(c.last_id) >= top + 3
    made_up = results[100:200]
    assert all(r == 404 for r in made_up), made_up  # refused before any Redis work
    assert all(r == 200 for r in results[200:]), results[200:]  # bad ids: a fresh snapshot, not an error
    health = [s for r in results[:100] if isinstance(r, set) for s in r]
    assert set(health) <= {200}, set(health)


async def test_a_bad_resume_id_cannot_capture_the_feed(sim: Sim, gateway_proc: Any) -> None:  # noqa: F811
    base, _ = gateway_proc
    url = base + "/sse/heatmap/single?underlying=SPX"
    async with httpx.AsyncClient(timeout=None) as http:
        for bad in BAD_IDS[:3]:
            top = await current_version(base, "single")
            stop = asyncio.Event()
            holder = asyncio.create_task(hostile_sse(http, url, bad, stop))  # the first subscriber of the feed
            await asyncio.sleep(0.3)
            later = SseClient()
            reading = asyncio.create_task(later.read(http, url, top + 2, timeout=60))
            await sim.advance(1)
            await reading
            assert later.events[:2] == ["geometry", "snapshot"] and "diff" in later.events, bad
            stop.set()
            with contextlib.suppress(Exception):
                await holder


@pytest.fixture
def capped_gateway(redis_url: str) -> Any:
    with gateway_at(redis_url, MARKETSWARM_SSE_MAX_RESUME_DIFFS="3") as (base, _):
        yield base


async def event_names(http: httpx.AsyncClient, url: str, last_id: str, until_version: int) -> list[str]:
    names, event = [], ""
    async with asyncio.timeout(30), http.stream("GET", url, headers={"Last-Event-ID": last_id}) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
                names.append(event)
            elif line.startswith("id:") and event != "geometry" and int(line[3:]) >= until_version:
                return names
    return names


async def test_a_resume_far_behind_gets_a_snapshot_not_the_whole_history(sim: Sim, capped_gateway: str) -> None:  # noqa: F811
    base = capped_gateway
    url = base + "/sse/heatmap/single?underlying=SPX"
    top = await current_version(base, "single")
    assert top > 6
    async with httpx.AsyncClient(timeout=None) as http:
        near = await event_names(http, url, str(top - 3), top)
        far = await event_names(http, url, str(top - 6), top)
    assert near == ["diff"] * 3  # within the cap: exactly the missed diffs
    assert far == ["geometry", "snapshot"]  # beyond it: a snapshot, however long the history
