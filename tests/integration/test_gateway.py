"""The gateway over a real topology: REST models, SSE snapshot + diffs, resume with Last-Event-ID,
trimmed history, auth, and 200 clients coming and going without leaking."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from marketswarm.agents.publish.assemble import assemble
from marketswarm.agents.sources.simulated import SimMarket
from marketswarm.agents.sources.writer import RawWriter
from marketswarm.schemas.models import GexModel, HeatmapModel
from marketswarm.topology import streams
from marketswarm.topology.embedded import free_port
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.pipeline import run_until_idle
from marketswarm.topology.settings import Settings

pytestmark = pytest.mark.integration

T0 = 1_763_996_400_000_000_000  # Monday 2025-11-24 15:00 UTC
SECOND = 1_000_000_000


class Sim:
    """Feeds a seeded simulated market into the raw streams and runs the topology to idle."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.market = SimMarket("SPX", 11, 1500, T0)
        self.t = T0
        self.settings = Settings(underlyings=["SPX"], block_ms=50, publish_interval_ms=200)

    async def advance(self, seconds: float) -> None:
        r = aioredis.Redis.from_url(self.url)
        writer = RawWriter(r, Metrics(), "sim")
        end = self.t + int(seconds * SECOND)
        while self.t < end:
            self.t += SECOND // 4
            await writer.write("SPX", self.market.advance(self.t), self.t)
        await r.aclose()
        await run_until_idle(self.url, self.settings, ["SPX"], timeout_s=120)


@pytest.fixture
async def sim(redis_url: str) -> Sim:
    s = Sim(redis_url)
    await s.advance(3)
    return s


@pytest.fixture
def gateway_proc(redis_url: str) -> Any:
    port = free_port()
    env = dict(
        os.environ, MARKETSWARM_REDIS_URL=redis_url, MARKETSWARM_GATEWAY_PORT=str(port), MARKETSWARM_UNDERLYINGS="SPX"
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "marketswarm.topology", "gateway"], env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    try:
        yield base, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


class SseClient:
    """Reads SSE events and reconstructs the model the way the dashboard does."""

    def __init__(self) -> None:
        self.header: dict[str, Any] | None = None
        self.tiles: dict[str, Any] = {}
        self.last_id: str | None = None
        self.events: list[str] = []

    def apply(self, event: str, data: str, eid: str) -> None:
        self.events.append(event)
        self.last_id = eid
        body = orjson.loads(data)
        if event == "snapshot":
            rows = body.pop("tiles", None) or body.pop("by_strike", [])
            self.tiles = {r.get("k") or f"s|{round(r['strike'] * 1000):012d}": r for r in rows}
            self.header = body
        elif event == "diff":
            assert int(eid) == body["version"]
            if body["reset"]:
                self.tiles = {}
            self.tiles.update(body["upserts"])
            for k, (value, score, legs_ts) in body["values"].items():
                self.tiles[k].update(value=value, score=score, legs_ts_ns=legs_ts)
            for k in body["removes"]:
                self.tiles.pop(k, None)
            self.header = body["header"]

    def model(self, strategy: str) -> dict[str, Any]:
        assert self.header is not None
        header = orjson.dumps(self.header)
        return orjson.loads(assemble(strategy, header, {k: orjson.dumps(v) for k, v in self.tiles.items()}))  # type: ignore[no-any-return]

    async def read(self, client: httpx.AsyncClient, url: str, until_version: int, timeout: float = 30) -> None:  # noqa: ASYNC109
        headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
        async with asyncio.timeout(timeout), client.stream("GET", url, headers=headers) as resp:
            assert resp.status_code == 200
            event, data, eid = "", [], ""
            async for line in resp.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif line.startswith("id:"):
                    eid = line[3:].strip()
                elif line == "" and data:
                    self.apply(event, "\n".join(data), eid)
                    event, data = "", []
                    if self.last_id and int(self.last_id) >= until_version:
                        return


async def current_version(base: str, strategy: str) -> int:
    async with httpx.AsyncClient() as c:
        path = "/api/gex/SPX" if strategy == "gex" else f"/api/models/SPX/{strategy}"
        return int((await c.get(base + path)).json()["version"])


async def test_rest_models_validate_and_match_published_state(sim: Sim, gateway_proc: Any) -> None:
    base, _ = gateway_proc
    async with httpx.AsyncClient(base_url=base) as c:
        for s in ("single", "vertical", "butterfly"):
            r = await c.get(f"/api/models/SPX/{s}")
            assert r.status_code == 200, r.text
            m = HeatmapModel.model_validate(r.json())
            assert m.version >= 1 and m.tiles and m.spot
        g = GexModel.model_validate((await c.get("/api/gex/SPX")).json())
        assert g.by_strike and g.call_wall
        assert (await c.get("/api/models/SPX/condor")).status_code == 404
        assert (await c.get("/api/models/QQQ/single")).status_code == 404
        assert (await c.get("/readyz")).json()["ready"] is True
        assert (await c.get("/api/underlyings")).json() == ["SPX"]
        assert b"marketswarm_versions_published_total" in (await c.get("/metrics")).content
        page = await c.get("/")
        assert page.status_code == 200 and "/static/app.js" in page.text and "http" not in page.text.split("<body>")[1]


@pytest.mark.parametrize("strategy", ["butterfly", "gex"])
async def test_sse_resume_reconstructs_exactly_the_model(sim: Sim, gateway_proc: Any, strategy: str) -> None:
    base, _ = gateway_proc
    url = base + (f"/sse/heatmap/{strategy}?underlying=SPX" if strategy != "gex" else "/sse/gex?underlying=SPX")
    steady, flaky = SseClient(), SseClient()
    async with httpx.AsyncClient(timeout=None) as http:
        v0 = await current_version(base, strategy)
        await flaky.read(http, url, v0)
        assert flaky.events == ["snapshot"]
        steady_task = asyncio.create_task(steady.read(http, url, 10**9, timeout=120))
        await asyncio.sleep(0.5)
        await sim.advance(3)  # versions published while `flaky` is away
        v1 = await current_version(base, strategy)
        assert v1 > v0 + 2
        await flaky.read(http, url, v1)  # reconnects with Last-Event-ID
        assert flaky.events[1] == "diff" and "snapshot" not in flaky.events[1:]
        for _ in range(100):
            if steady.last_id and int(steady.last_id) >= v1:
                break
            await asyncio.sleep(0.1)
        steady_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await steady_task
        rest = (await http.get(base + ("/api/gex/SPX" if strategy == "gex" else f"/api/models/SPX/{strategy}"))).json()
    assert rest["version"] == v1
    assert flaky.model(strategy) == steady.model(strategy) == rest


async def test_trimmed_history_gives_a_fresh_snapshot(sim: Sim, gateway_proc: Any, aredis: aioredis.Redis) -> None:
    base, _ = gateway_proc
    client = SseClient()
    client.last_id = "1"
    key = streams.DIFFS["single"].key("SPX")
    top = await current_version(base, "single")
    assert top > 3
    await aredis.xtrim(key, minid=f"{top}-0")
    async with httpx.AsyncClient(timeout=None) as http:
        await client.read(http, base + "/sse/heatmap/single?underlying=SPX", top)
    assert client.events == ["snapshot"]


async def test_two_hundred_clients_leave_nothing_behind(sim: Sim, gateway_proc: Any, aredis: aioredis.Redis) -> None:
    base, proc = gateway_proc

    def rss_kb() -> int:
        with open(f"/proc/{proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))

    async def one(http: httpx.AsyncClient) -> None:
        c = SseClient()
        await c.read(http, base + "/sse/heatmap/butterfly?underlying=SPX", 1)

    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=60)) as http:
        await asyncio.gather(*(one(http) for _ in range(50)))  # warm up
        await asyncio.sleep(1)
        rss0, conns0 = rss_kb(), (await aredis.info("clients"))["connected_clients"]
        for _ in range(4):
            await asyncio.gather(*(one(http) for _ in range(50)))
        await asyncio.sleep(1.5)
        rss1, conns1 = rss_kb(), (await aredis.info("clients"))["connected_clients"]
        metrics = (await http.get(base + "/metrics")).text
    assert conns1 <= conns0 + 2, (conns0, conns1)
    assert rss1 - rss0 < 20_000, f"gateway RSS grew {rss1 - rss0} kB over 200 clients"
    assert 'marketswarm_sse_clients_entries{stream="all"} 0.0' in metrics


async def test_bearer_token_and_cors(redis_url: str, sim: Sim) -> None:
    import uvicorn
    from pydantic import SecretStr

    from marketswarm.agents.publish.gateway import create_app

    st = Settings(underlyings=["SPX"], api_token=SecretStr("s3cret"), cors_origins=["https://desk.example"])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(st, redis_url), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 -- uvicorn has no "listening" event
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            assert (await c.get("/api/models/SPX/single")).status_code == 401
            assert (await c.get("/api/models/SPX/single?token=s3cret")).status_code == 401  # never a query string
            ok = await c.get("/api/models/SPX/single", headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/", follow_redirects=False)).status_code == 303
            login = await c.post("/auth", data={"token": "s3cret"}, follow_redirects=False)
            assert login.status_code == 303 and "ms_token" in login.headers["set-cookie"]
            c.cookies.set("ms_token", "s3cret")
            assert (await c.get("/api/models/SPX/single")).status_code == 200
            c.cookies.clear()
            pre = await c.options(
                "/api/models/SPX/single",
                headers={"Origin": "https://desk.example", "Access-Control-Request-Method": "GET"},
            )
            assert pre.headers.get("access-control-allow-origin") == "https://desk.example"
            bad = await c.options(
                "/api/models/SPX/single",
                headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
            )
            assert "access-control-allow-origin" not in bad.headers
    finally:
        server.should_exit = True
        await task
