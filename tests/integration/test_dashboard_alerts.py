"""Alerts in a real headless Chromium: with notifications turned on, a rule firing (the vigil agent on
spot crossing the flip) shows a toast, a log entry with its values, and a browser notification."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from marketswarm.agents.sources.writer import RawWriter
from marketswarm.ops.inprocess import run_until_idle
from marketswarm.schemas import alerts
from marketswarm.schemas.documents import HEADER_FIELD
from marketswarm.topology import streams
from marketswarm.topology.metrics import Metrics

from .test_dashboard import CHROMIUM_ARGS, chromium
from .test_gateway import SECOND, Sim, gateway_at

pytestmark = [pytest.mark.integration, pytest.mark.browser]
_ = chromium  # the fixture

# Records each notification the page creates (the browser shows it; a headless one has no screen).
SPY = """(() => { const N = window.Notification; window.__notes = [];
  window.Notification = class extends N { constructor(t, o) { super(t, o); window.__notes.push({ title: t, ...o }); } };
  Object.defineProperty(window.Notification, "permission", { get: () => N.permission });
  window.Notification.requestPermission = (...a) => N.requestPermission(...a); })();"""


async def until(page: Any, js: str, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = await page.evaluate(js)
        if got:
            return got
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {js}"
        await asyncio.sleep(0.2)


@pytest.mark.timeout(300)
async def test_a_rule_firing_shows_a_toast_a_log_entry_and_a_notification(
    redis_url: str, chromium: str, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    rules = tmp_path / "rules.toml"
    off = "".join(f"[rules.{r}]\nenabled = false\n" for r in alerts.MARKET_RULES if r != "flip_cross")
    rules.write_text("[rules.flip_cross]\ncooldown_s = 0\n" + off)
    sim = Sim(redis_url)
    sim.settings = sim.settings.model_copy(update={"rules": rules})
    await sim.advance(2)
    r = aioredis.Redis.from_url(redis_url)
    flip = orjson.loads(await r.hget(streams.model_key("SPX", "gex"), HEADER_FIELD))["flip"]
    assert flip is not None

    async def spot(value: float) -> None:
        sim.t += SECOND
        frame = orjson.dumps([{"ev": "V", "val": value, "T": "I:SPX", "t": sim.t // 1_000_000}])
        await RawWriter(r, Metrics(), "test").write("SPX", [("massive.ws", frame)], sim.t)
        await run_until_idle(redis_url, sim.settings, ["SPX"], timeout_s=60)

    await spot(flip - 25)  # below the flip: the rule's side
    with gateway_at(redis_url) as (base, _proc):
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            context = await browser.new_context(viewport={"width": 1400, "height": 900})
            await context.grant_permissions(["notifications"], origin=base)
            await context.add_init_script(SPY)
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(base + "/")
            await until(page, "() => window.marketswarm?.alerts.feeds.includes('SPX:alerts')", 20)
            await page.click("#alerts-btn")
            await page.click("#notify")
            assert await until(page, "() => window.marketswarm.alerts.notify", 5)
            assert await page.text_content("#notify") == "Notifications on"

            await spot(flip + 25)  # crosses up: the vigil fires, the tab's feed brings it
            toast = await until(page, "() => document.querySelector('#toasts .toast')?.innerText", 20)
            assert f"crossed up through the flip {flip:,.2f}" in toast and f"spot {flip + 25:,.0f}" in toast.replace(
                ",", ","
            )
            entry = await page.inner_text("#alerts-log li")
            assert "flip cross" in entry.lower() and "crossed up through the flip" in entry and "distance_pct" in entry
            notes = await page.evaluate("() => window.__notes")
            assert len(notes) == 1 and "crossed up" in notes[0]["body"] and notes[0]["tag"]
            [(entry_id, fields)] = await r.xrange(streams.ALERTS["gex"].key("SPX"))
            assert notes[0]["tag"] == orjson.loads(fields[b"data"])["fingerprint"]
            assert not errors, errors
            await browser.close()
    await r.aclose()
