"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) over the whole topology
started with `marketswarm run`: heatmap cells appear, a diff changes a cell, DELAYED data is flagged,
screenshots are saved."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from marketswarm.ops.embedded import free_port

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture
def chromium(debian_tools: Callable[[str, str], str]) -> str:
    """Debian's Chromium: Playwright drives it (its own browser download is not possible here)."""
    return debian_tools("chromium", "chromium")


@contextlib.contextmanager
def marketswarm_run(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """`marketswarm run` with ``env``; stopped with Ctrl-C (SIGINT), which must exit cleanly."""
    proc = subprocess.Popen([sys.executable, "-m", "marketswarm.ops", "run"], env=env, stdout=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(40) == 0, "Ctrl-C must stop the topology cleanly"
        finally:
            if proc.poll() is None:
                proc.kill()


@contextlib.contextmanager
def running(redis_url: str, data_dir: Path, underlyings: str, sim_rate: str) -> Iterator[str]:
    """`marketswarm run` over ``redis_url`` with the simulated market, until every underlying has a
    butterfly model; yields the gateway's base URL."""
    port = free_port()
    env = dict(
        os.environ,
        MARKETSWARM_REDIS_URL=redis_url,
        MARKETSWARM_GATEWAY_PORT=str(port),
        MARKETSWARM_DATA_DIR=str(data_dir),
        MARKETSWARM_UNDERLYINGS=underlyings,
        MARKETSWARM_SIM_RATE=sim_rate,
        MARKETSWARM_LOG_LEVEL="WARNING",
    )
    base = f"http://127.0.0.1:{port}"
    with marketswarm_run(env) as proc:
        deadline = time.monotonic() + 120
        while True:
            try:
                urls = [f"{base}/api/models/{u}/butterfly" for u in underlyings.split(",")]
                if all(httpx.get(url, timeout=2).status_code == 200 for url in urls):
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, "marketswarm run exited"
            assert time.monotonic() < deadline, "no butterfly models within 120 s"
            time.sleep(0.5)
        yield base


@pytest.fixture
def topology(redis_url: str, tmp_path: Path) -> Iterator[str]:
    with running(redis_url, tmp_path / "data", "SPX", "1500") as base:
        yield base


@pytest.mark.timeout(600)  # the first run may install Chromium
async def test_dashboard_shows_a_live_heatmap(topology: str, chromium: str, redis_url: str) -> None:
    import orjson
    import redis.asyncio as aioredis
    from playwright.async_api import async_playwright

    from marketswarm.agents.sources.files import Recorded, write_recorded
    from marketswarm.schemas.codec import RawFormat

    exe = chromium
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        # Playwright's wait_for_function evaluates its predicate with eval, which the page's CSP forbids;
        # bypass_csp lets the test's own predicates run (test_dashboard_tabs keeps the CSP in force).
        page = await browser.new_page(viewport={"width": 1500, "height": 950}, bypass_csp=True)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(topology + "/")
        await page.wait_for_function("document.querySelectorAll('td.cell').length > 100", timeout=30_000)
        assert await page.text_content("#conn") == "live"
        before = await page.eval_on_selector_all("td[data-k]", "tds => tds.map(td => td.textContent)")
        version0 = int(await page.text_content("#version") or 0)
        await page.wait_for_function(
            "([v, cells]) => Number(document.getElementById('version').textContent) > v && "
            "[...document.querySelectorAll('td[data-k]')].some((td, i) => td.textContent !== cells[i])",
            arg=[version0, before],
            timeout=30_000,
        )
        spot_row = await page.query_selector("tr.spot")
        assert spot_row is not None, "spot is marked"
        assert await page.is_hidden("#delayed"), "real-time data is not flagged"
        await page.screenshot(path=str(ARTIFACTS / "dashboard-butterfly.png"))
        # Index values from the provider's delayed feed, timed just ahead of the simulated ones (inside
        # MARKETSWARM_MAX_EVENT_FUTURE_S, so admitted): the models say delayed and the dashboard flags it.
        r = aioredis.Redis.from_url(redis_url)

        async def delayed_values() -> None:
            while True:
                t_ms = time.time_ns() // 1_000_000 + 1_500
                frame = orjson.dumps([{"ev": "V", "val": 6001.25, "T": "I:SPX", "t": t_ms}])
                await write_recorded(r, [Recorded("SPX", RawFormat.WS_DELAYED, time.time_ns(), frame)])
                await asyncio.sleep(0.3)

        feeding = asyncio.create_task(delayed_values())
        try:
            await page.wait_for_selector("#delayed", state="visible", timeout=30_000)
        finally:
            feeding.cancel()
            await asyncio.gather(feeding, return_exceptions=True)
            await r.aclose()
        await page.screenshot(path=str(ARTIFACTS / "dashboard-delayed.png"))
        await page.click("button[data-strategy=gex]")
        await page.wait_for_function(GEX_DRAWN, timeout=30_000)
        assert "Flip" in (await page.text_content("#gex-cards") or "")
        await page.screenshot(path=str(ARTIFACTS / "dashboard-gex.png"))
        await zero_dte_view(page)
        await page.click("button[data-strategy=butterfly]")
        await connection_drops_and_returns(page, int(topology.rsplit(":", 1)[1]))
        await derived_views(page)
        await browser.close()
    assert not errors, errors
    assert (ARTIFACTS / "dashboard-butterfly.png").stat().st_size > 10_000


GEX_DRAWN = (
    "(() => { const c = echarts.getInstanceByDom(document.getElementById('gex-chart')); "
    "return c && c.getOption().series.some(s => s.name === 'Net GEX' && s.data.length > 10); })()"
)
INTENT_DRAWN = (
    "(() => { const c = echarts.getInstanceByDom(document.getElementById('intent-chart')); "
    "return c && c.getOption().series.some(s => s.data.some(v => v)); })()"
)
CELL_OPACITY = "td => Number(getComputedStyle(td).opacity)"


async def zero_dte_view(page: Any) -> None:
    """When today has an expiry (the simulated market lists today's until its close), the GEX chart's
    expiry choice offers 0DTE, and choosing it draws the 0DTE view's strikes and levels."""
    header = await page.evaluate("window.marketswarm.state.header")
    options = await page.eval_on_selector("#gex-expiry", "s => [...s.options].map(o => o.value)")
    assert ("0dte" in options) == (header["zero_dte"] is not None)
    if header["zero_dte"] is None:
        return
    await page.select_option("#gex-expiry", "0dte")
    await page.wait_for_timeout(300)
    o = await page.evaluate("echarts.getInstanceByDom(document.getElementById('gex-chart')).getOption()")
    net = next(s for s in o["series"] if s["name"] == "Net GEX")
    strikes = {r["strike"] for r in header["zero_dte"]["by_strike"]}
    assert net["data"] and {x for x, _ in net["data"]} <= strikes
    await page.screenshot(path=str(ARTIFACTS / "dashboard-gex-0dte.png"))
    await page.select_option("#gex-expiry", "all")


def gateway_pid(port: int) -> int:
    """The `marketswarm gateway` child that `marketswarm run` started on ``port``."""
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv[-2:] == [b"gateway", b""] and f"MARKETSWARM_GATEWAY_PORT={port}".encode() in (
                proc / "environ"
            ).read_bytes().split(b"\0"):
                return int(proc.name)
    raise AssertionError(f"no gateway process on port {port}")


async def connection_drops_and_returns(page: Any, port: int) -> None:
    """Live and fresh: cells at full strength. The gateway dies (the supervisor restarts it): the pill
    says the feed is gone and the cells dim (one notion of staleness). It comes back: fresh again."""
    await page.wait_for_function("document.body.dataset.fresh === 'fresh'", timeout=30_000)
    assert await page.eval_on_selector("td.cell", CELL_OPACITY) == 1
    os.kill(gateway_pid(port), signal.SIGKILL)
    await page.wait_for_function("document.body.dataset.fresh === 'stale'", timeout=30_000)
    assert await page.text_content("#conn") in ("reconnecting", "disconnected")
    fresh = await page.text_content("#fresh") or ""
    assert fresh.startswith(("reconnecting", "disconnected")) and "old" in fresh
    await page.wait_for_timeout(400)  # the dimming's transition, if any
    assert await page.eval_on_selector("td.cell", CELL_OPACITY) < 0.6
    await page.screenshot(path=str(ARTIFACTS / "dashboard-disconnected.png"))
    await page.wait_for_function("document.body.dataset.fresh === 'fresh'", timeout=60_000)
    assert await page.text_content("#conn") == "live"


async def derived_views(page: Any) -> None:
    """The indicator row, the intent map and the best-flies table show the derived models as REST has
    them; a best fly opens its tile in the butterfly heatmap."""
    rest = await page.evaluate("fetch('/api/models/SPX/market_mode').then(r => r.json())")
    assert rest["strategy"] == "market_mode" and 0 <= rest["score"] <= 100
    await page.wait_for_function(
        "['compression','expansion','transition','neutral'].some(m => "
        "document.querySelector('#ind-mode .v').textContent.startsWith(m))",
        timeout=30_000,
    )
    # What the row shows is the document the page follows (once the next frame has drawn it).
    await page.wait_for_function(
        "document.querySelector('#ind-mode .v').textContent"
        ".startsWith(window.marketswarm.derived.docs.market_mode.mode)",
        timeout=10_000,
    )
    await page.wait_for_function("document.querySelector('#ind-gravity .sub') !== null", timeout=30_000)
    assert "band" in (await page.text_content("#ind-gravity") or "")
    await page.wait_for_function("document.querySelector('#ind-flow .v').textContent.startsWith('day')", timeout=60_000)
    await page.click("button[data-strategy=intent]")
    await page.click("button[data-window='30m']")
    await page.wait_for_function(INTENT_DRAWN, timeout=60_000)  # the simulated market trades
    o = await page.evaluate("echarts.getInstanceByDom(document.getElementById('intent-chart')).getOption()")
    assert [s["name"] for s in o["series"]] == ["Calls", "Puts"] and "net premium" in o["yAxis"][0]["name"]
    await page.screenshot(path=str(ARTIFACTS / "dashboard-intent.png"))
    await page.click("button[data-strategy=best_flies]")
    await page.wait_for_selector("#flies tbody tr", timeout=60_000)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-best-flies.png"))
    for attempt in range(3):
        # The row's cells and the click in one step: the table follows live versions. A new epoch can
        # take the fly's strike off the grid before the heatmap loads: then the next list is tried.
        await page.click("button[data-strategy=best_flies]")
        await page.wait_for_selector("#flies tbody tr", timeout=60_000)
        first = await page.eval_on_selector(
            "#flies tbody tr",
            "tr => { const cells = [...tr.children].map(td => td.textContent); tr.click(); return cells; }",
        )
        try:
            await page.wait_for_selector("td.focus", timeout=15_000)
            break
        except Exception:
            if attempt == 2:
                raise
    assert await page.get_attribute("button[data-strategy=butterfly]", "class") == "active"
    assert await page.eval_on_selector("#expiry", "s => s.value") == first[1]
    center, width = float(first[3]), float(first[4])
    key = await page.get_attribute("td.focus", "data-k")
    assert key is not None and [float(x) for x in key.split("|")] == [center, width]
    await page.screenshot(path=str(ARTIFACTS / "dashboard-fly-opened.png"))
