"""The dashboard's views over real chains, in headless Chromium with every request off this machine
refused: the heatmap opens at the money and hides expired expiries, explains blank cells, flags
non-positive debits, and its hover shows the legs' bid/ask with the natural debit; "single" is strike
x expiry; one notion of staleness dims what is old; the GEX charts (ECharts) carry axes, units, a
legend, the gamma profile, the walls as traders read them, per-expiry and strike x expiry views; the
API docs work offline. Screenshots go to .artifacts/."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from marketswarm.ops.embedded import free_port
from tests.integration.test_dashboard import ARTIFACTS, CHROMIUM_ARGS

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHAINS = ("cboe/spx_2024-01-07_1052ET.csv", "cboe/ndx_2024-03-22_2140ET.csv")
WEIGHTS = {"single": [1], "vertical": [1, -1], "butterfly": [1, -2, 1]}


@pytest.fixture
def chromium(debian_tools: Callable[[str, str], str]) -> str:
    return debian_tools("chromium", "chromium")


@pytest.fixture
def gateway(redis_url: str, real_data: Path, tmp_path: Path) -> Iterator[str]:
    """The real SPX and NDX chains replayed into the test server, and `marketswarm gateway` over it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETSWARM_")}
    env |= {
        "MARKETSWARM_REDIS_URL": redis_url,
        "MARKETSWARM_UNDERLYINGS": "SPX,NDX",
        "MARKETSWARM_DATA_DIR": str(tmp_path),
    }
    cli = [sys.executable, "-m", "marketswarm.ops"]
    replay = subprocess.run(
        [*cli, "replay", "--redis-url", redis_url, *(str(real_data / c) for c in CHAINS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert replay.returncode == 0, replay.stderr[-3000:]
    port = free_port()
    proc = subprocess.Popen(
        [*cli, "gateway"], env=env | {"MARKETSWARM_GATEWAY_PORT": str(port)}, stdout=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/api/models/NDX/butterfly", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the gateway did not serve the models"
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)


# Hover a cell the way the mouse does, and say which position it is.
HOVER = (
    "td => { td.dispatchEvent(new MouseEvent('mousemove', {bubbles: true, clientX: 400, clientY: 400})); "
    "return Number(td.dataset.pos); }"
)
TIP = "document.getElementById('tip').textContent"
FLAGS = "tds => tds.map(td => [td.textContent, td.classList.contains('neg')])"
NDX_SHOWN = "window.marketswarm.state.header?.underlying === 'NDX' && document.querySelectorAll('td.cell').length > 50"
GEX_SHOWN = (
    "window.marketswarm.state.header?.strategy === 'gex' && "
    "echarts.getInstanceByDom(document.getElementById('gex-chart'))"
)


async def option(page: Any, el: str) -> Any:
    return await page.evaluate(f"echarts.getInstanceByDom(document.getElementById('{el}')).getOption()")


async def spot_row_in_view(page: Any) -> bool:
    return bool(
        await page.evaluate(
            """() => { const row = document.querySelector('#heatmap tr.spot'), box = row && row.closest('.scroller');
            if (!row) return false; const r = row.getBoundingClientRect(), b = box.getBoundingClientRect();
            return r.top >= b.top && r.bottom <= b.bottom && r.bottom <= innerHeight; }"""
        )
    )


@pytest.mark.timeout(600)
async def test_heatmap_gex_freshness_and_docs_over_real_chains(gateway: str, chromium: str) -> None:
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    async with httpx.AsyncClient(base_url=gateway) as http:
        fly = (await http.get("/api/models/SPX/butterfly")).json()
        gex = (await http.get("/api/gex/SPX")).json()
        # The hover's quotes endpoint takes a tile's legs, nothing else.
        legs = fly["tiles"][0]["legs"]
        ok = await http.get("/api/quotes/SPX", params={"epoch": fly["epoch"], "symbols": ",".join(legs)})
        assert [q["symbol"] for q in ok.json()["quotes"]] == legs
        for bad in ("SPX'; --", ",".join(legs * 3), ""):
            r = await http.get("/api/quotes/SPX", params={"epoch": fly["epoch"], "symbols": bad})
            assert r.status_code == 422, bad
        assert (await http.get("/api/quotes/NOSUCH", params={"epoch": "e", "symbols": legs[0]})).status_code == 404
    off_machine: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        # bypass_csp: Playwright's wait_for_function uses eval, which the page's CSP forbids.
        context = await browser.new_context(viewport={"width": 1500, "height": 950}, bypass_csp=True)

        async def local_only(route: Any) -> None:  # no CDN, no font service: this machine or nothing
            if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
                await route.continue_()
            else:
                off_machine.append(route.request.url)
                await route.abort()

        await context.route("**/*", local_only)
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(gateway + "/")
        await page.evaluate("localStorage.clear()")
        await page.goto(gateway + "/")
        await page.wait_for_function("document.querySelectorAll('td.cell').length > 100", timeout=30_000)

        # Expired expiries are gone: the chain was downloaded on Sunday 2024-01-07, after Friday's close.
        expiries = await page.eval_on_selector("#expiry", "s => [...s.options].map(o => o.value)")
        assert "2024-01-05" in {t["expiry"] for t in fly["tiles"]} and "2024-01-05" not in expiries
        assert expiries[0] == "2024-01-08"
        assert await spot_row_in_view(page), "the heatmap opens at the money"

        # Non-positive mid debits are flagged, and only they.
        flagged = await page.eval_on_selector_all("td.cell", FLAGS)
        assert any(neg for _, neg in flagged)
        assert all(neg == (float(v) <= 0) for v, neg in flagged)

        # A valued cell: legs with bid/ask, the mid debit and the natural (ask/bid) debit.
        pos = await page.eval_on_selector("tr.spot td.cell", HOVER)
        await page.wait_for_function(f"{TIP}.includes('natural debit') && !{TIP}.includes('...')")
        tip = await page.text_content("#tip") or ""
        tile = await page.evaluate(f"window.marketswarm.tileAt({pos}, true)")
        async with httpx.AsyncClient(base_url=gateway) as http:
            asked = {"epoch": fly["epoch"], "symbols": ",".join(tile["legs"])}
            quotes = (await http.get("/api/quotes/SPX", params=asked)).json()["quotes"]
        natural = sum(w * (q["ask"] if w > 0 else q["bid"]) for w, q in zip(WEIGHTS["butterfly"], quotes, strict=True))
        assert f"natural debit {natural:.2f}" in tip and f"mid debit {tile['value']:.2f}" in tip
        for q in quotes:
            assert q["symbol"] in tip and f"bid {q['bid']:.2f}" in tip and f"ask {q['ask']:.2f}" in tip
        await page.screenshot(path=str(ARTIFACTS / "dashboard-real-hover.png"))

        # A blank cell says which leg has no mid, and why.
        blank = await page.eval_on_selector("td.none[data-pos]", HOVER)
        await page.wait_for_function(f"{TIP}.includes(' has ')")
        tip = await page.text_content("#tip") or ""
        legs = (await page.evaluate(f"window.marketswarm.tileAt({blank}, true)"))["legs"]
        assert tip.split("\n")[1].startswith("no mid: ") and any(
            f"{s} has no" in tip or f"{s} has crossed" in tip for s in legs
        ), tip

        # One notion of staleness: a 2024 chain is old, and every view says so the same way.
        assert await page.get_attribute("body", "data-fresh") == "stale"
        assert "d old" in (await page.text_content("#fresh") or "")
        opacity = await page.eval_on_selector("td.cell", "td => Number(getComputedStyle(td).opacity)")
        assert opacity < 0.6, "stale cells are dimmed"
        await page.screenshot(path=str(ARTIFACTS / "dashboard-real-butterfly.png"))

        # Single: strike x expiry, the open expiries as columns.
        await page.click("button[data-strategy=single]")
        await page.wait_for_function("document.querySelector('#heatmap th:nth-child(2)')?.textContent === '01-08'")
        heads = await page.eval_on_selector_all("#heatmap thead th", "ths => ths.map(t => t.textContent)")
        assert heads[1:] == [e[5:] for e in expiries]
        assert await page.eval_on_selector_all("#heatmap tbody tr", "rs => rs.length") > 50
        assert await spot_row_in_view(page)
        await page.screenshot(path=str(ARTIFACTS / "dashboard-real-single.png"))

        # NDX: at the money too.
        await page.click("button[data-strategy=butterfly]")
        await page.select_option("#underlying", "NDX")
        await page.wait_for_function(NDX_SHOWN)
        assert await spot_row_in_view(page), "NDX opens at the money"

        # GEX by strike: axes with units, a legend, the profile, the levels with the walls traders read.
        await page.select_option("#underlying", "SPX")
        await page.click("button[data-strategy=gex]")
        await page.click("button[data-gexmode=strike]")
        await page.wait_for_function(GEX_SHOWN)
        await page.wait_for_timeout(300)
        o = await option(page, "gex-chart")
        assert "strike" in o["xAxis"][0]["name"] and "USD per 1% move" in o["yAxis"][0]["name"]
        names = [s["name"] for s in o["series"]]
        assert names[:3] == ["Call GEX", "Put GEX", "Net GEX"] and names[3].startswith("Gamma profile")
        assert o["legend"][0]["show"] is not False
        profile = o["series"][3]["data"]
        want = [(pt["spot"], pt["net"]) for pt in gex["profile"] if abs(pt["spot"] / gex["spot"] - 1) <= 0.06]
        assert [tuple(x) for x in profile] == want
        levels = {d["name"]: d["xAxis"] for d in o["series"][2]["markLine"]["data"]}
        assert levels == {
            "spot": gex["spot"],
            "flip": gex["flip"],
            "call wall": gex["call_wall_above"],
            "put wall": gex["put_wall_below"],
        }
        assert levels["put wall"] <= levels["spot"] <= levels["call wall"]
        # Each label runs along its own line (levels a few points apart never print over each other).
        labels = [d["label"] for d in o["series"][2]["markLine"]["data"]]
        assert all(lab["position"] == "insideEndTop" for lab in labels)
        assert [lab["formatter"] for lab in labels] == [f"{n} {x:.0f}" for n, x in levels.items()]
        assert "at or above spot" in (await page.text_content("#gex-view .note") or "")
        await page.screenshot(path=str(ARTIFACTS / "dashboard-gex-by-strike.png"))

        # One expiry, from the strike x expiry matrix.
        m = gex["by_expiry_strike"]
        opts = await page.eval_on_selector("#gex-expiry", "s => [...s.options].map(o => o.value)")
        assert opts == ["all", *m["expiries"]]  # no 0DTE on a Sunday
        await page.select_option("#gex-expiry", m["expiries"][1])
        await page.wait_for_timeout(300)
        o = await option(page, "gex-chart")
        net = {x: y for x, y in o["series"][0]["data"]}
        lo, hi = gex["spot"] * 0.94, gex["spot"] * 1.06
        assert net == {k: v for k, v in zip(m["strikes"], m["net"][1], strict=True) if lo <= k <= hi}

        await page.click("button[data-gexmode=matrix]")
        await page.wait_for_timeout(300)
        o = await option(page, "gex-chart")
        assert o["series"][0]["type"] == "heatmap" and len(o["series"][0]["data"]) == len(m["strikes"]) * len(
            m["expiries"]
        )
        assert o["yAxis"][0]["data"] == m["expiries"] and o["xAxis"][0]["name"] == "strike"
        await page.screenshot(path=str(ARTIFACTS / "dashboard-gex-matrix.png"))

        await page.click("button[data-gexmode=expiry]")
        await page.wait_for_timeout(300)
        o = await option(page, "gex-chart")
        assert o["xAxis"][0]["data"] == [e["expiry"] for e in gex["by_expiry"]]
        assert [d["value"] for d in o["series"][0]["data"]] == [e["net"] for e in gex["by_expiry"]]
        assert (await page.text_content("#gex-cards .fresh-card .v")) == "stale"  # the card and the pill agree
        await page.screenshot(path=str(ARTIFACTS / "dashboard-gex-by-expiry.png"))

        # The API docs, with nothing from off this machine.
        await page.goto(gateway + "/api/docs")
        await page.wait_for_selector(".opblock", timeout=30_000)
        assert await page.eval_on_selector_all(".opblock", "x => x.length") > 8
        await page.screenshot(path=str(ARTIFACTS / "api-docs-offline.png"))
        await browser.close()
    assert not errors, errors
    assert not off_machine, off_machine
