"""The gateway's alerts: REST pages, the SSE feed with Last-Event-ID resume, a tab's alerts feed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from marketswarm.schemas import alerts, codec
from marketswarm.topology import streams

from .test_gateway import T0, Sim, gateway_at

pytestmark = pytest.mark.integration
MS = 1_000_000


def alert(i: int, t_ms: int) -> alerts.Alert:
    return alerts.Alert(
        fingerprint=alerts.fingerprint("flip_cross", "SPX", "flip", "up", i, t_ms), rule="flip_cross",
        severity="warning", underlying="SPX", t_ns=t_ms * MS, version=i, subject="flip",
        message=f"SPX <b>spot</b> crossed {i}", values={"direction": "up", "spot": 5000.0 + i},
    )  # fmt: skip


async def add(r: aioredis.Redis, i: int, t_ms: int, seq: int = 0) -> str:
    await r.xadd(streams.ALERTS["gex"].key("SPX"), codec.encode_alert(alert(i, t_ms)), id=f"{t_ms}-{seq}")
    return f"{t_ms}-{seq}"


async def data_lines(lines: Any, n: int, ids: list[str] | None = None) -> list[list[str]]:
    """The next ``n`` events' data lines (their ``id:`` lines into ``ids``)."""
    out, cur = [], []
    while len(out) < n:
        line = await asyncio.wait_for(anext(lines), 10)
        if line.startswith("data: "):
            cur.append(line[6:])
        elif line.startswith("id: ") and ids is not None:
            ids.append(line[4:])
        elif line == "" and cur:
            out.append(cur)
            cur = []
    return out


async def test_alerts_over_rest_sse_and_a_tab(redis_url: str, tmp_path: Path) -> None:
    sim = Sim(redis_url)
    quiet = tmp_path / "rules.toml"  # the alerts here are the test's own: no rule fires
    quiet.write_text("".join(f"[rules.{r}]\nenabled = false\n" for r in alerts.MARKET_RULES))
    sim.settings = sim.settings.model_copy(update={"rules": quiet})
    await sim.advance(2)  # SPX is published
    r = aioredis.Redis.from_url(redis_url)
    t = T0 // MS
    ids = [await add(r, 0, t), await add(r, 1, t, 1), await add(r, 2, t + 1000), await add(r, 3, t + 2000)]
    with gateway_at(redis_url) as (base, _):
        async with httpx.AsyncClient(timeout=15) as c:
            whole = (await c.get(f"{base}/api/alerts", params={"since": str(t)})).json()
            assert (
                [a["id"] for a in whole["alerts"]] == ids
                and whole["next"] is None
                and whole["last"]
                == {
                    "SPX:alerts": ids[-1],
                    "SPX:alerts.intent": "0-0",
                    "SPX:alerts.best_flies": "0-0",
                }
            )
            first = whole["alerts"][0]
            assert first == {"id": ids[0], **orjson.loads(orjson.dumps(alerts.plain_json(alert(0, t))))}
            pages: list[Any] = []
            since: str | None = str(t)
            while since is not None:
                page = (
                    await c.get(f"{base}/api/alerts", params={"since": since, "limit": 3, "underlying": "SPX"})
                ).json()
                pages += page["alerts"]
                since = page["next"]
            assert pages == whole["alerts"]
            later = (await c.get(f"{base}/api/alerts", params={"since": str(t + 1000)})).json()
            assert [a["id"] for a in later["alerts"]] == ids[2:]
            assert (await c.get(f"{base}/api/alerts", params={"since": "noon"})).status_code == 400
            assert (await c.get(f"{base}/api/alerts", params={"underlying": "XYZ"})).status_code == 404
            spec = (await c.get(f"{base}/api/openapi.json")).json()
            assert "/api/alerts" in spec["paths"] and "/sse/alerts" in spec["paths"]

            # SSE: after the second alert (its timed id), the rest, then a new one as it is appended
            async with c.stream("GET", f"{base}/sse/alerts", headers={"Last-Event-ID": str(t * 1000 + 1)}) as resp:
                lines = resp.aiter_lines()
                event_ids: list[str] = []
                got = await data_lines(lines, 2, event_ids)
                assert [orjson.loads(d[0])["id"] for d in got] == ids[2:]
                new = await add(r, 4, t + 3000)
                [[d]] = await data_lines(lines, 1, event_ids)
                assert orjson.loads(d)["id"] == new and orjson.loads(d)["message"] == "SPX <b>spot</b> crossed 4"
            # every event's id says where each alerts stream stands (the number resumed them all after it);
            # a reconnect with the one before the last gets exactly the last again
            others = f"SPX:alerts.best_flies@{t * 1000 + 1},SPX:alerts.intent@{t * 1000 + 1}"
            assert (
                event_ids[-1] == f"SPX:alerts@{(t + 3000) * 1000},{others}"
                and event_ids[-2] == f"SPX:alerts@{(t + 2000) * 1000},{others}"
            )
            async with c.stream("GET", f"{base}/sse/alerts", headers={"Last-Event-ID": event_ids[-2]}) as resp:
                [[d]] = await data_lines(resp.aiter_lines(), 1)
                assert orjson.loads(d)["id"] == new

            # a tab's feed: first data line names the feed
            params = {"feeds": f"SPX:alerts@{(t + 1000) * 1000}"}
            async with c.stream("GET", f"{base}/sse/tab", params=params) as resp:
                got = await data_lines(resp.aiter_lines(), 2)
                assert [g[0] for g in got] == ["SPX:alerts", "SPX:alerts"]
                assert [orjson.loads(g[1])["id"] for g in got] == [ids[3], new]
    await r.aclose()
