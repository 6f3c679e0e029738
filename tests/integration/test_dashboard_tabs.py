"""A trader's whole screen in one browser: four dashboard tabs stay live side by side (one SSE
connection each), survive a `kill -9` of the gateway with every feed resuming exactly, and strings
from data never run as script (escaped, and the page's CSP forbids inline script)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.test_dashboard import ARTIFACTS, CHROMIUM_ARGS, gateway_pid, running
from tests.integration.test_gateway import gateway_at

pytestmark = [pytest.mark.integration, pytest.mark.browser]

# (underlying, view) of each tab, as a trader lays them out.
TABS = [("SPX", "butterfly"), ("NDX", "butterfly"), ("SPX", "gex"), ("NDX", "intent")]
HOSTILE = "<img src=x onerror=alert(1)>"
OPTION_TEXTS = (
    "() => { const o = [...document.querySelectorAll('#underlying option')]; "
    "return o.length && o.map(x => x.textContent); }"
)

# Every feed event the tab applies, recorded from now on: [feed, type, version].
RECORD = """() => { const f = window.marketswarm.feed, take = f.onEvent; window.__events = [];
  f.onEvent = (n, t, b) => { if (t !== 'geometry' && t !== 'alert' && b) window.__events.push([n, t, b.version]);
  take(n, t, b); }; }"""


@pytest.fixture
def chromium(debian_tools: Callable[[str, str], str]) -> str:
    return debian_tools("chromium", "chromium")


@pytest.fixture
def two_markets(redis_url: str, tmp_path: Path) -> Iterator[str]:
    with running(redis_url, tmp_path / "data", "SPX,NDX", "800") as base:
        yield base


async def until(page: Any, predicate: str, timeout_s: float) -> Any:
    """Poll ``predicate`` (a function's source) with page.evaluate: wait_for_function would eval it
    inside the page, which its CSP forbids, and this test keeps the CSP in force."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await page.evaluate(predicate)
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {predicate}"
        await asyncio.sleep(0.2)


def versions(page_events: list[list[Any]]) -> dict[str, list[tuple[str, int]]]:
    out: dict[str, list[tuple[str, int]]] = {}
    for feed, kind, v in page_events:
        out.setdefault(feed, []).append((kind, v))
    return out


def assert_exact(feeds: dict[str, list[tuple[str, int]]], label: str) -> None:
    """After each feed's first recorded event, every event is the next version's diff."""
    for feed, seq in feeds.items():
        for (_, a), (kind, b) in zip(seq, seq[1:], strict=False):
            assert (kind, b) == ("diff", a + 1), f"{label}: {feed} went from {a} to {kind} {b}"


async def heads(pages: list[Any]) -> list[dict[str, int]]:
    return [await p.evaluate("() => Object.fromEntries(window.marketswarm.feed.versions)") for p in pages]


@pytest.mark.timeout(600)
async def test_four_tabs_stay_live_and_resume_exactly_after_the_gateway_dies(two_markets: str, chromium: str) -> None:
    from playwright.async_api import async_playwright

    base = two_markets
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        context = await browser.new_context(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        pages = []
        started = time.monotonic()
        for u, view in TABS:
            page = await context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(base + "/")
            await until(page, "() => document.querySelectorAll('#underlying option').length === 2", 10)
            await page.select_option("#underlying", u)
            await page.click(f"button[data-strategy={view}]")
            pages.append(page)
        for page, (u, view) in zip(pages, TABS, strict=True):
            await until(page, f"() => window.marketswarm.feed.versions.has('{u}:{view}')", 10)
            await page.evaluate(RECORD)
        live_s = time.monotonic() - started
        assert live_s < 10 + 4 * 2, f"four tabs live after {live_s:.1f} s"  # 10 s each, opened one after another
        # Each tab: one connection, its feeds only; every tab's feeds advance, for 30 s.
        for page, (u, view) in zip(pages, TABS, strict=True):
            feeds = await until(
                page, f"() => window.marketswarm.feed.feeds.includes('{u}:alerts') && window.marketswarm.feed.feeds", 10
            )
            assert sorted(feeds) == sorted(
                {
                    f"{u}:{view}",
                    *(f"{u}:{a}" for a in ("alerts", "alerts.intent", "alerts.best_flies")),
                    *(f"{u}:{d}" for d in ("market_mode", "gravity", "intent", "best_flies")),
                }
            )
        before = await heads(pages)
        await asyncio.sleep(30)
        after = await heads(pages)
        for (u, view), a, b in zip(TABS, before, after, strict=True):
            assert b[f"{u}:{view}"] > a[f"{u}:{view}"], f"{u} {view} did not advance in 30 s"
        await pages[0].screenshot(path=str(ARTIFACTS / "dashboard-tab-spx-butterfly.png"))
        await pages[1].screenshot(path=str(ARTIFACTS / "dashboard-tab-ndx-butterfly.png"))

        os.kill(gateway_pid(int(base.rsplit(":", 1)[1])), signal.SIGKILL)  # the supervisor restarts it
        for page in pages:
            await until(page, "() => window.marketswarm.state.conn !== 'up'", 15)
        killed = await heads(pages)
        for page in pages:
            await until(page, "() => window.marketswarm.state.conn === 'up'", 60)
        await asyncio.sleep(30)
        resumed = await heads(pages)
        for (u, view), a, b in zip(TABS, killed, resumed, strict=True):
            assert b[f"{u}:{view}"] > a[f"{u}:{view}"], f"{u} {view} did not advance after the restart"
        for page, (u, view) in zip(pages, TABS, strict=True):
            assert_exact(versions(await page.evaluate("() => window.__events")), f"{u} {view}")
            assert await page.text_content("#conn") == "live"
        await pages[2].screenshot(path=str(ARTIFACTS / "dashboard-tab-spx-gex.png"))
        await pages[3].screenshot(path=str(ARTIFACTS / "dashboard-tab-ndx-intent.png"))
        await browser.close()
    assert not errors, errors


@pytest.fixture
def hostile_gateway(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """A capture whose underlying is markup, replayed into the server; a gateway over it."""
    from marketswarm.agents.sources.simulated import SimMarket

    capture = tmp_path / "hostile.jsonl"
    t0, t = 1_763_996_400_000_000_000, 1_763_996_400_000_000_000
    market = SimMarket("SPX", 3, 200, t0)
    with capture.open("wb") as f:
        for _ in range(4):
            t += 250_000_000
            for src, data in market.advance(t):
                f.write(orjson.dumps({"u": HOSTILE, "src": src, "rx_ns": t, "data": data.decode()}) + b"\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETSWARM_")}
    env |= {"MARKETSWARM_REDIS_URL": redis_url, "MARKETSWARM_DATA_DIR": str(tmp_path / "data")}
    cli = [sys.executable, "-m", "marketswarm.ops"]
    # Its symbols are SPX's, so it yields no model (exit 1), but the name is recorded as an underlying.
    subprocess.run([*cli, "replay", "--redis-url", redis_url, str(capture)], env=env, capture_output=True, timeout=120)
    with gateway_at(redis_url, MARKETSWARM_DATA_DIR=str(tmp_path / "data")) as (base, _):
        yield base


@pytest.mark.timeout(300)
async def test_markup_in_data_is_shown_as_text_and_never_runs(hostile_gateway: str, chromium: str) -> None:
    from playwright.async_api import async_playwright

    base = hostile_gateway
    async with httpx.AsyncClient(base_url=base) as http:
        assert HOSTILE in (await http.get("/api/underlyings")).json()
        page_csp = (await http.get("/")).headers["content-security-policy"]
    assert "script-src 'self'" in page_csp and "unsafe-inline" not in page_csp.split("script-src")[1].split(";")[0]
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        # Escaping alone (the CSP bypassed), then escaping with the CSP in force: no dialog either way.
        for bypass in (True, False):
            context = await browser.new_context(bypass_csp=bypass)
            page = await context.new_page()
            dialogs: list[str] = []

            async def dismiss(d: Any, seen: list[str] = dialogs) -> None:
                seen.append(d.message)
                await d.dismiss()

            page.on("dialog", dismiss)
            await page.goto(base + "/")
            texts = await until(page, OPTION_TEXTS, 15)
            assert HOSTILE in texts
            await page.wait_for_timeout(1500)  # an injected image would have failed to load by now
            assert await page.evaluate("() => document.querySelectorAll('img').length") == 0
            assert not dialogs, dialogs
            await context.close()
        await browser.close()
