"""The gateway through a store that stops answering: its server is paused (SIGSTOP) for 10 s. Every
REST, readiness and metrics request answers within its budget (503 with Retry-After when it needs the
store); a tab's SSE connection stays up, is told ``stalled``, then ``resumed``, and its feeds go on
with no version missed or repeated."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import orjson
import pytest

from marketswarm.ops.embedded import EmbeddedServer, find_binary
from tests.integration.test_gateway import Sim, gateway_at

pytestmark = pytest.mark.integration

PAUSE_S = 10.0
ANSWER_S = 6.0  # the acceptance bound (the gateway's budget is 5 s)
FEEDS = ("SPX:gex", "SPX:butterfly", "SPX:market_mode")
PATHS = ("/api/gex/SPX", "/api/models/SPX/butterfly", "/api/models/SPX/market_mode", "/readyz", "/metrics")


class Tab:
    """A dashboard tab's one SSE connection: (monotonic time, event, feed, version) as they come."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str, int | None]] = []

    async def follow(self, base: str) -> None:
        url = f"{base}/sse/tab?feeds={','.join(FEEDS)}"
        async with httpx.AsyncClient(timeout=httpx.Timeout(5, read=60)) as client, client.stream("GET", url) as resp:
            assert resp.status_code == 200
            event, data = "", []
            async for line in resp.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif not line and event:
                    body = orjson.loads("\n".join(data[1:]))
                    version = body.get("version") if isinstance(body, dict) and event != "geometry" else None
                    self.events.append((time.monotonic(), event, data[0], version))
                    event, data = "", []


@contextlib.asynccontextmanager
async def paused_later(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedServer, Sim, str]]:
    """A server of its own (the test pauses it), a published simulated market and a gateway over it:
    (server, market, gateway base URL)."""
    binary = os.environ.get("MARKETSWARM_TEST_REDIS_SERVER") or find_binary()
    server = EmbeddedServer(tmp_path / "server", binary=binary, appendonly=False, record=False)
    server.start()
    try:
        sim = Sim(server.url)
        await sim.advance(3)
        with gateway_at(server.url) as (base, _):
            yield server, sim, base
    finally:
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


@pytest.mark.timeout(240)
async def test_a_paused_store_gets_503s_in_time_and_a_stall_the_tab_sees(tmp_path: Path) -> None:
    async with paused_later(tmp_path) as (server, sim, base):
        tab = Tab()
        following = asyncio.create_task(tab.follow(base))
        await sim.advance(2)
        await asyncio.sleep(1)
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        paused_at = time.monotonic()
        answers: list[tuple[str, int, float, str | None]] = []

        async def ask(client: httpx.AsyncClient, path: str) -> None:
            t = time.monotonic()
            r = await client.get(base + path)
            answers.append((path, r.status_code, time.monotonic() - t, r.headers.get("retry-after")))

        try:
            async with httpx.AsyncClient(timeout=30) as client:
                while time.monotonic() - paused_at < PAUSE_S - ANSWER_S:
                    await asyncio.gather(*(ask(client, p) for p in PATHS))
                    await asyncio.sleep(0.5)
                await asyncio.sleep(max(0.0, paused_at + PAUSE_S - time.monotonic()))
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        await sim.advance(2)  # new versions after the stall
        await asyncio.sleep(2)
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)

    assert answers, "no request was made during the pause"
    slow = [a for a in answers if a[2] > ANSWER_S]
    assert not slow, f"answers slower than {ANSWER_S} s: {slow}"
    assert all(status in (200, 503) for _, status, _, _ in answers), answers
    assert all(retry for _, status, _, retry in answers if status == 503), "a 503 without Retry-After"
    assert {p for p, status, _, _ in answers if status == 503} >= {"/api/gex/SPX", "/readyz"}, answers

    kinds = [(e, f) for _, e, f, _ in tab.events]
    for feed in FEEDS:
        stalled = kinds.index(("stalled", feed))
        assert ("resumed", feed) in kinds[stalled:], f"{feed}: no resumed after the stall"
        stalled_at = tab.events[stalled][0]
        assert stalled_at - paused_at < PAUSE_S, f"{feed}: the stall was told only after {stalled_at - paused_at:.1f} s"
    versions: dict[str, list[int]] = defaultdict(list)
    for _, event, feed, version in tab.events:
        if event in ("snapshot", "diff") and version is not None:
            versions[feed].append(version)
    for feed in ("SPX:gex", "SPX:butterfly"):
        vs = versions[feed]
        assert vs == list(range(vs[0], vs[0] + len(vs))), f"{feed}: versions {vs}"
        assert len(vs) > 2, f"{feed}: nothing after the stall"


@pytest.mark.browser
@pytest.mark.timeout(240)
async def test_the_dashboard_shows_the_stall_and_goes_live_again(
    tmp_path: Path, debian_tools: Callable[[str, str], str]
) -> None:
    from playwright.async_api import async_playwright

    from tests.integration.test_dashboard import CHROMIUM_ARGS
    from tests.integration.test_dashboard_tabs import until

    chromium = debian_tools("chromium", "chromium")
    async with paused_later(tmp_path) as (server, sim, base), async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(base + "/")
        await page.click("button[data-strategy=gex]")
        await until(page, "() => window.marketswarm.feed.versions.has('SPX:gex')", 15)
        assert await page.text_content("#conn") == "live"
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            await until(page, "() => document.querySelector('#conn').textContent === 'store stalled'", PAUSE_S)
            assert "store stalled" in (await page.text_content("#fresh") or "")
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        before = await page.evaluate("() => window.marketswarm.feed.versions.get('SPX:gex')")
        await sim.advance(2)
        await until(page, "() => document.querySelector('#conn').textContent === 'live'", 15)
        await until(page, f"() => window.marketswarm.feed.versions.get('SPX:gex') > {before}", 15)
        await browser.close()
    assert not errors, errors
