"""The day as a timeline in a real headless Chromium over `marketswarm run` (the embedded server, as
`make run` starts it): the Day view's lines carry the REST level history at hovered times, the
scrubber draws the heatmap as it stood at a past time and returns to live, and after Ctrl-C and a
new run on the same data the history before the stop is still served."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from marketswarm.ops.embedded import free_port

from .test_dashboard import CHROMIUM_ARGS, chromium, marketswarm_run

pytestmark = [pytest.mark.integration, pytest.mark.browser]
_ = chromium  # the fixture

HOVERED = 3
SETTLED_MS = 10_000


def run_env(data_dir: Path, port: int) -> dict[str, str]:
    env = dict(
        os.environ,
        MARKETSWARM_GATEWAY_PORT=str(port),
        MARKETSWARM_DATA_DIR=str(data_dir),
        MARKETSWARM_UNDERLYINGS="SPX",
        MARKETSWARM_SIM_RATE="1500",
        MARKETSWARM_LOG_LEVEL="WARNING",
    )
    env.pop("MARKETSWARM_REDIS_URL", None)  # the embedded server, with its data under data_dir
    return env


def levels(base: str, **params: str) -> dict[str, Any]:
    resp = httpx.get(f"{base}/api/history/SPX/levels", params=params, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def wait_for(what: str, check: Any, timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            got = check()
            if got:
                return got
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.5)


@pytest.mark.timeout(600)
async def test_day_view_scrubber_and_history_across_a_restart(tmp_path: Path, chromium: str) -> None:
    from playwright.async_api import async_playwright

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with marketswarm_run(run_env(tmp_path / "data", port)):
        wait_for("GEX level history", lambda: len(levels(base)["columns"]["t"]) >= 25)
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            page = await browser.new_page(viewport={"width": 1500, "height": 950}, bypass_csp=True)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(base + "/")
            await page.wait_for_function("document.querySelectorAll('td.cell').length > 100", timeout=30_000)

            # The Day view: hover three times; the tooltip reads the REST values of that row.
            await page.click("#tabs button[data-strategy=day]")
            await page.wait_for_function("window.marketswarm.history.rows >= 25", timeout=30_000)
            rest = levels(base)["columns"]
            picks = [len(rest["t"]) * k // (HOVERED + 1) for k in range(1, HOVERED + 1)]
            for i in picks:
                text, shown = await hover(page, rest["t"][i])
                # The row the tooltip shows (its time to the ms: rows of several series share seconds).
                assert shown in rest["t"], (shown, rest["t"][i])
                row = {f: rest[f][rest["t"].index(shown)] for f in rest}
                assert row["spot"] is not None
                for name, field in (
                    ("spot", "spot"),
                    ("flip", "flip"),
                    ("call wall", "call_wall"),
                    ("put wall", "put_wall"),
                ):
                    want = "-" if row[field] is None else f"{row[field]:.2f}"
                    assert f"{name} {want}" in text, (name, text)
                assert f"mode {row['mode'] or '-'}" in text

            # The scrubber: a past time shows that version's cells, marked as history; Live returns.
            await page.click("#tabs button[data-strategy=butterfly]")
            await page.wait_for_function("document.querySelectorAll('td.cell').length > 100", timeout=30_000)
            t = rest["t"][picks[0]] // 1000 * 1000  # the scrubber moves by seconds
            url = f"{base}/api/columns/SPX/butterfly"
            past = (await asyncio.to_thread(httpx.get, url, params={"at": str(t)}, timeout=10)).json()["snapshot"]
            await page.eval_on_selector(
                "#scrub", "(el, t) => { el.value = String(t); el.dispatchEvent(new Event('input')); }", t
            )
            await page.wait_for_function(
                "v => document.getElementById('version').textContent === String(v)", arg=past["version"], timeout=15_000
            )
            assert "(history)" in (await page.text_content("#when") or "")
            cells = await page.eval_on_selector_all(
                "td[data-pos]", "tds => tds.map(td => [Number(td.dataset.pos), td.textContent])"
            )
            assert len(cells) > 100
            k = past["k"]
            for pos, text in cells:
                v = past["vals"][pos * k]
                assert (text == "") if v is None else abs(float(text) - v) <= 0.005 + 1e-9, (pos, text, v)
            await page.click("#live")
            await page.wait_for_function(
                "v => Number(document.getElementById('version').textContent) > v", arg=past["version"], timeout=15_000
            )
            assert await page.text_content("#when") == "live"
            assert not errors, errors
            await browser.close()
        # Up to SETTLED_MS before the newest point: a series' points come within a second or two of
        # each other's (intent publishes once a second), and one more may come with the stop's flush.
        newest = levels(base)
        before = levels(base, **{"from": str(newest["from"]), "to": str(newest["to"] - SETTLED_MS)})
        assert len(before["columns"]["t"]) >= 10
    # Ctrl-C, then `marketswarm run` again on the same data: the history before the stop is served.
    with marketswarm_run(run_env(tmp_path / "data", port)):
        wait_for("the gateway", lambda: httpx.get(f"{base}/healthz", timeout=2).status_code == 200)
        again = levels(base, **{"from": str(before["from"]), "to": str(before["to"])})
        assert again["columns"] == before["columns"]


async def hover(page: Any, t: int) -> tuple[str, int]:
    """Move the mouse onto the Day chart's spot line at time ``t``; the tooltip's text and the time of
    the row it shows (a neighbour within the same second may be nearer the mouse). The chart is
    redrawn as points arrive (its axis grows), so the position is taken again on each try."""
    for _ in range(12):
        xy = await page.evaluate(
            """t => {
              const el = document.getElementById('day-chart'), c = echarts.getInstanceByDom(el);
              const series = c ? c.getOption().series : [];
              const row = series.length ? series[0].data.find((d) => d[0] === t) : null;
              const px = row ? c.convertToPixel({ seriesIndex: 0 }, row) : null;
              if (!px) return null;
              const [x, y] = px;
              const box = el.getBoundingClientRect(), d = new Date(t), pad = (v) => String(v).padStart(2, "0");
              return [box.left + x, box.top + y, `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`];
            }""",
            t,
        )
        if xy is None:  # not drawn yet
            await asyncio.sleep(0.5)
            continue
        await page.mouse.move(xy[0] - 30, xy[1] + 40)
        await page.mouse.move(xy[0], xy[1])
        try:
            await page.wait_for_selector(".day-tip", state="visible", timeout=2000)
            text = str(await page.inner_text(".day-tip"))
            if text.startswith(xy[2]):  # the row at t's second (not a row a redraw moved under the mouse)
                shown = await page.get_attribute(".day-tip b[data-t]", "data-t")
                return text, int(shown or 0)
        except Exception:  # noqa: BLE001 - redrawn under the mouse: try again
            continue
    raise AssertionError(f"no tooltip at {t}")
