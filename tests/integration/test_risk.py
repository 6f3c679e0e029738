"""The risk graph over the real SPX chain: ``/api/risk`` against an independent computation (the payoff at
every strike, the breakevens and extremes, the probability of profit under the implied density), its
refusals, and the dashboard's panel: a click on a tile opens it, labelled with the server's numbers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_dashboard import ARTIFACTS, CHROMIUM_ARGS
from tests.integration.test_dashboard_views import gateway  # noqa: F401 (the fixture)
from tests.integration.test_models_real_chains import csv_ivs, implied_pop, read_chain

pytestmark = pytest.mark.integration

SPX = "cboe/spx_2024-01-07_1052ET.csv"


def fly_legs(tile: dict[str, Any]) -> str:
    return ",".join(f"{s}:{q}" for s, q in zip(tile["legs"], (1, -2, 1), strict=True))


def intrinsic(side: str, k: float, x: float) -> float:
    return max(x - k, 0.0) if side == "call" else max(k - x, 0.0)


async def test_a_fly_s_risk_equals_an_independent_computation(gateway: str, real_data: Path) -> None:  # noqa: F811
    chain = read_chain(real_data / SPX)
    ivs = csv_ivs(real_data / SPX)
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        flies = (await http.get("/api/models/SPX/butterfly")).json()["tiles"]
        picked = [t for t in flies if t["expiry"] == "2024-01-09" and t["pop"] and 0.1 < t["pop"] < 0.6][:6]
        assert picked
        for tile in picked:
            r = (await http.get("/api/risk/SPX", params={"legs": fly_legs(tile), "before": "12"})).json()
            k, w, d = tile["strike"], tile["width"], tile["natural"]
            assert (r["expiry"], r["debit"], r["basis"]) == ("2024-01-09", d, "natural")
            assert r["mid"] == pytest.approx(tile["value"], abs=1e-6)
            # The payoff at expiry, exact at every strike of the series (each one is on the graph).
            strikes = {leg["k"] / 1000 for leg in chain["legs"] if leg["expiry"] == "2024-01-09"
                       and abs(leg["k"] / 1000 / chain["spot"] - 1) <= 0.04}  # fmt: skip
            at = dict(zip(r["x"], r["expiry_pnl"], strict=True))
            assert strikes <= set(at)
            for x in strikes:
                want = (
                    intrinsic(tile["side"], k - w, x)
                    - 2 * intrinsic(tile["side"], k, x)
                    + intrinsic(tile["side"], k + w, x)
                    - d
                )
                assert at[x] == pytest.approx(want, abs=1e-6), x
            assert r["breakevens"] == pytest.approx([k - w + d, k + w - d], abs=1e-4)
            assert (r["max_profit"], r["max_loss"]) == (pytest.approx(w - d), pytest.approx(-d))
            assert (r["max_profit_usd"], r["max_loss_usd"]) == (round((w - d) * 100, 2), round(-d * 100, 2))
            assert r["pop"] == pytest.approx(implied_pop(chain, ivs, tile, r["spot"], r["asof_ns"]), abs=0.005)
            assert r["pop"] == pytest.approx(tile["pop"], abs=0.005)  # the heatmap's column says the same
            # Expected P&L: the expected payoff under the same distribution (the theo) less the debit.
            assert r["expected_pnl"] == pytest.approx(r["theo"] - d, abs=0.02)
            assert r["theo"] == pytest.approx(tile["theo"], abs=0.006)
            assert [c["label"] for c in r["curves"]] == ["now", "12 h before expiry"]
            assert r["expected_move"]["low"] < r["spot"] < r["expected_move"]["high"]
        # A vertical's loss is bounded, a naked call's profit is not.
        call = next(t for t in flies if t["side"] == "call" and t["expiry"] == "2024-01-09")["legs"][1]
        naked = (await http.get("/api/risk/SPX", params={"legs": call})).json()
        assert naked["max_profit"] is None and naked["max_loss"] == pytest.approx(-naked["debit"])
        # A person's mistakes: one line each, 422 or 404.
        for legs, why in (
            ("SPXW240109C0465000:1", "SYMBOL[:quantity]"),
            (f"{call}:0", "non-zero"),
            (f"{call},{call}", "distinct"),
            ("SPXW300119C09000000", "not in the current grid"),
        ):
            bad = await http.get("/api/risk/SPX", params={"legs": legs})
            assert bad.status_code == 422 and why in bad.json()["detail"], (legs, bad.text)
        assert (await http.get("/api/risk/NOSUCH", params={"legs": call})).status_code == 404
        assert (await http.get("/api/risk/SPX", params={"legs": call, "price": "x"})).status_code == 422
        given = (await http.get("/api/risk/SPX", params={"legs": call, "price": "1.5"})).json()
        assert (given["debit"], given["basis"]) == (1.5, "given")


@pytest.mark.browser
@pytest.mark.timeout(300)
async def test_a_click_on_a_tile_opens_its_risk_graph(gateway: str, debian_tools: Callable[[str, str], str]) -> None:  # noqa: F811
    from playwright.async_api import async_playwright

    chromium = debian_tools("chromium", "chromium")
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        context = await browser.new_context(viewport={"width": 1500, "height": 950}, bypass_csp=True)
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: errors.append("dialog: " + d.message))
        await page.goto(gateway + "/")
        await page.evaluate("localStorage.clear()")
        await page.goto(gateway + "/")
        await page.wait_for_function("document.querySelectorAll('td.cell').length > 100", timeout=30_000)
        cell = page.locator("tr.spot td.cell").nth(1)  # at the money, the second width
        pos = int(await cell.get_attribute("data-pos") or -1)
        async with page.expect_response(lambda r: "/api/risk/SPX" in r.url) as answer:
            await cell.click()
        served = await (await answer.value).json()
        await page.wait_for_function("window.marketswarm.risk !== null")
        tile = await page.evaluate(f"window.marketswarm.tileAt({pos})")
        assert served["legs"] and [leg["symbol"] for leg in served["legs"]] == tile["legs"]
        assert [leg["qty"] for leg in served["legs"]] == [1, -2, 1]
        async with httpx.AsyncClient(base_url=gateway) as http:
            legs = ",".join(f"{s}:{q}" for s, q in zip(tile["legs"], (1, -2, 1), strict=True))
            direct = (await http.get("/api/risk/SPX", params={"legs": legs})).json()
        for key in ("breakevens", "max_loss", "max_loss_usd", "max_profit", "pop", "debit"):
            assert served[key] == direct[key], key
        be = await page.text_content("#risk-be") or ""
        assert be == " · ".join(f"{b:.2f}" for b in direct["breakevens"]) and len(direct["breakevens"]) == 2
        loss = await page.text_content("#risk-maxloss") or ""
        assert loss == f"−${abs(direct['max_loss_usd']):.2f} ({direct['max_loss']:.2f} pts)"
        assert await page.text_content("#risk-pop") == f"{100 * direct['pop']:.1f} %"
        # The chart is drawn: the breakevens are marked on it with their labels.
        marked = await page.evaluate(
            "echarts.getInstanceByDom(document.getElementById('risk-chart')).getOption().series[0].markLine.data"
            ".filter(d => d.label && String(d.label.formatter).startsWith('breakeven')).map(d => d.xAxis)"
        )
        assert marked == direct["breakevens"]
        await page.screenshot(path=str(ARTIFACTS / "risk.png"))
        await page.click("#risk-close")
        assert await page.is_hidden("#risk-panel")
        assert not errors, errors
        await browser.close()
