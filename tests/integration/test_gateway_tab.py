"""One connection per tab, and a gateway that is safe by default: the multiplexed feed with exact
resume of every feed, the per-address cap under a burst, the refusal of an unauthenticated public
bind, the sign-in cookie and rate limit, no `*` origin, and error bodies that name no host."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr, ValidationError

from marketswarm.agents import catalog
from marketswarm.ops.embedded import free_port
from marketswarm.schemas.documents import position_of
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.settings import Settings
from tests.integration.test_gateway import Sim, SseClient, gateway_at, sim  # noqa: F401

pytestmark = pytest.mark.integration

FEEDS = ("SPX:butterfly", "SPX:gex", "SPX:market_mode", "SPX:intent")


async def tab_events(
    http: httpx.AsyncClient, base: str, feeds: str, until: dict[str, int]
) -> AsyncIterator[tuple[str, str, dict[str, Any] | None]]:
    """(feed, event, data) from one tab connection, until every feed in ``until`` reached its version."""
    reached: dict[str, int] = {}
    async with asyncio.timeout(60), http.stream("GET", base + "/sse/tab", params={"feeds": feeds}) as resp:
        assert resp.status_code == 200, await resp.aread()
        event, data = "", []
        async for line in resp.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
            elif line.startswith("id:"):
                raise AssertionError("a tab's events carry no id: one id cannot place several feeds")
            elif line == "" and data:
                feed, body = data[0], orjson.loads("\n".join(data[1:]))
                yield feed, event, body
                if event != "geometry" and body is not None:
                    reached[feed] = body["version"]
                event, data = "", []
                if all(reached.get(f, -1) >= v for f, v in until.items()):
                    return


def take(heat: SseClient, scores: dict[int, float | None], event: str, body: Any) -> None:
    heat.apply(event, orjson.dumps(body).decode(), str(body.get("version", 0)) if body else "0")
    if event == "snapshot":
        scores.clear()
        scores.update(enumerate(body["scores"]))
    elif event == "diff":
        if body["reset"]:
            scores.clear()
        for p, sc in zip(itertools.accumulate(body["pos"]), body["scores"], strict=True):
            scores[p] = sc


async def rest_version(http: httpx.AsyncClient, base: str, feed: str) -> int:
    u, model = feed.split(":")
    path = f"/api/gex/{u}" if model == "gex" else f"/api/models/{u}/{model}"
    return int((await http.get(base + path)).json()["version"])


async def test_one_connection_carries_every_feed_and_resumes_each_exactly(sim: Sim, redis_url: str) -> None:  # noqa: F811
    with gateway_at(redis_url) as (base, _):
        async with httpx.AsyncClient(timeout=None) as http:
            tops = {f: await rest_version(http, base, f) for f in FEEDS}
            heat = SseClient()  # the butterfly rebuilt by position from the tab's events
            scores: dict[int, float | None] = {}  # the server's score of each position, as last sent
            seen: dict[str, list[tuple[str, int]]] = {f: [] for f in FEEDS}
            async for feed, event, body in tab_events(http, base, ",".join(FEEDS), tops):
                if event != "geometry":
                    assert body is not None
                    seen[feed].append((event, body["version"]))
                if feed == "SPX:butterfly":
                    take(heat, scores, event, body)
            for f in FEEDS:
                assert seen[f][0][0] == "snapshot", (f, seen[f][:3])
            last = {f: seen[f][-1][1] for f in FEEDS}
            await sim.advance(3)  # versions the tab misses while it is away
            tops = {f: await rest_version(http, base, f) for f in FEEDS}
            assert all(tops[f] > last[f] for f in ("SPX:butterfly", "SPX:gex")), (last, tops)
            resume = ",".join(f"{f}@{last[f]}" for f in FEEDS)
            again: dict[str, list[tuple[str, int]]] = {f: [] for f in FEEDS}
            async for feed, event, body in tab_events(http, base, resume, tops):
                if event != "geometry":
                    assert body is not None
                    again[feed].append((event, body["version"]))
                if feed == "SPX:butterfly":
                    take(heat, scores, event, body)
            for f in FEEDS:  # exactly the missed versions, in order: no gap, no duplicate, no snapshot
                assert again[f] == [("diff", v) for v in range(last[f] + 1, tops[f] + 1)], (f, again[f][:5])
            rest = (await http.get(base + "/api/models/SPX/butterfly")).json()
            assert rest["version"] == tops["SPX:butterfly"]
            assert heat.model("butterfly") == rest  # the tab's columns are the REST model, tile for tile
            # Scores come from the server with the numbers, and equal the REST model's.
            assert heat.geometry is not None
            for tile in rest["tiles"]:
                assert scores[position_of(heat.geometry, tile["k"])] == tile["score"], tile
            for bad in ("", "SPX", "SPX:nosuch", "SPX:gex@x", ",".join(["SPX:gex"] * 2), ",".join([FEEDS[0]] * 17)):
                assert (await http.get(base + "/sse/tab", params={"feeds": bad})).status_code == 422, bad
            assert (await http.get(base + "/sse/tab", params={"feeds": "NOSUCH:gex"})).status_code == 404


async def test_the_per_address_cap_holds_under_a_burst_of_300_connects(sim: Sim, redis_url: str) -> None:  # noqa: F811
    cap = 20
    with gateway_at(redis_url, MARKETSWARM_SSE_MAX_PER_ADDRESS=str(cap)) as (base, _):
        stop = asyncio.Event()
        admitted = asyncio.Semaphore(0)

        async def connect(http: httpx.AsyncClient) -> int:
            async with http.stream("GET", base + "/sse/tab", params={"feeds": "SPX:gex"}) as resp:
                if resp.status_code == 200:
                    admitted.release()
                    await stop.wait()
                return resp.status_code

        limits = httpx.Limits(max_connections=400, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=httpx.Timeout(60), limits=limits) as http:
            burst = [asyncio.create_task(connect(http)) for _ in range(300)]
            for _ in range(cap):
                await asyncio.wait_for(admitted.acquire(), 30)
            await asyncio.sleep(1)  # every refusal has come back by now
            refused = [t.result() for t in burst if t.done()]
            assert len(refused) == 300 - cap and set(refused) == {429}, sorted(set(refused))
            stop.set()
            codes = await asyncio.gather(*burst)
            assert codes.count(200) == cap
            await asyncio.sleep(0.5)  # the streams have ended: their slots are free again
            metrics = (await http.get(base + "/metrics")).text
            assert 'marketswarm_sse_clients_entries{stream="all"} 0.0' in metrics
            assert 'marketswarm_gateway_refused_total{reason="address"} 280.0' in metrics
            stop.clear()
            again = asyncio.create_task(connect(http))
            await asyncio.wait_for(admitted.acquire(), 30)
            stop.set()
            assert await again == 200


def test_a_public_bind_without_a_token_is_refused_unless_asked_for(redis_url: str) -> None:
    port = str(free_port())
    env = {"MARKETSWARM_REDIS_URL": redis_url, "MARKETSWARM_GATEWAY_PORT": port, "MARKETSWARM_GATEWAY_HOST": "0.0.0.0"}
    cmd = [sys.executable, "-m", "marketswarm.ops"]
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETSWARM_")}
    for args in (["gateway"], ["run", "--source", "none"]):
        out = subprocess.run([*cmd, *args], env={**base_env, **env}, capture_output=True, text=True, timeout=30)
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "without a token" in lines[0] and "--no-auth" in lines[0], out.stderr
    # An empty token is no token (the Kubernetes placeholder secret): refused the same way.
    out = subprocess.run(
        [*cmd, "gateway"], env={**base_env, **env, "MARKETSWARM_API_TOKEN": ""}, capture_output=True, text=True
    )
    assert out.returncode == 2 and "without a token" in out.stderr
    for extra, flag in (({}, ["--no-auth"]), ({"MARKETSWARM_API_TOKEN": "s3cret"}, [])):
        proc = subprocess.Popen([*cmd, "gateway", *flag], env={**base_env, **env, **extra})
        try:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                assert proc.poll() is None, f"the gateway exited {proc.returncode} with {flag or extra}"
                time.sleep(0.1)
            else:
                raise AssertionError("the gateway did not start")
        finally:
            proc.terminate()
            proc.wait(10)


def test_a_wildcard_origin_is_refused_with_credentials() -> None:
    with pytest.raises(ValidationError, match="cannot be allowed with credentials"):
        Settings(cors_origins=["https://desk.example", "*"])


async def serve(settings: Settings, redis_url: str) -> tuple[Any, asyncio.Task[None], str]:
    import uvicorn

    from marketswarm.agents.gateway.app import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, redis_url, catalog.agents(), Metrics(CollectorRegistry())),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 -- uvicorn has no "listening" event
        await asyncio.sleep(0.02)
    return server, task, f"http://127.0.0.1:{port}"


async def test_sign_in_cookie_flags_and_rate_limit(redis_url: str) -> None:
    server, task, base = await serve(Settings(underlyings=["SPX"], api_token=SecretStr("s3cret")), redis_url)
    try:
        async with httpx.AsyncClient(base_url=base) as c:
            ok = await c.post("/auth", data={"token": "s3cret"}, follow_redirects=False)
            cookie = ok.headers["set-cookie"].lower()
            assert ok.status_code == 303 and "httponly" in cookie and "samesite=strict" in cookie
            assert "max-age=43200" in cookie and "secure" not in cookie  # plain HTTP: no Secure flag
            # Behind a TLS-terminating proxy on loopback (uvicorn trusts its X-Forwarded-Proto): Secure.
            tls = await c.post(
                "/auth", data={"token": "s3cret"}, headers={"X-Forwarded-Proto": "https"}, follow_redirects=False
            )
            assert "secure" in tls.headers["set-cookie"].lower()
            page = await c.get("/login")
            assert "script-src 'self'" in page.headers["content-security-policy"]
            codes = [
                (await c.post("/auth", data={"token": "wrong"}, follow_redirects=False)).status_code for _ in range(9)
            ]
            assert codes == [303] * 8 + [429], codes  # 10 attempts a minute per address, the 2 good ones included
            late = await c.post("/auth", data={"token": "s3cret"}, follow_redirects=False)
            assert late.status_code == 429 and int(late.headers["retry-after"]) > 0
    finally:
        server.should_exit = True
        await task


async def test_error_bodies_and_readiness_name_no_host_or_port(redis_url: str) -> None:
    dead_port = free_port()
    server, task, base = await serve(Settings(underlyings=["SPX"]), f"redis://127.0.0.1:{dead_port}/0")
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            for path in ("/readyz", "/api/models/SPX/butterfly", "/api/underlyings"):
                r = await c.get(path)
                assert r.status_code == 503, (path, r.status_code)
                assert str(dead_port) not in r.text and "127.0.0.1" not in r.text, (path, r.text)
    finally:
        server.should_exit = True
        await task


async def test_rest_bodies_built_in_a_worker_equal_the_model_version_after_version(sim: Sim, redis_url: str) -> None:  # noqa: F811
    """A polled model's JSON, built off the event loop from the gateway's followed copy: after every
    version the bytes equal the model built whole from the checkpoint and the diffs."""
    import redis.asyncio as aioredis

    from marketswarm.topology.reading import read_model

    r = aioredis.Redis.from_url(redis_url)
    try:
        with gateway_at(redis_url) as (base, _):
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                seen: dict[str, set[int]] = {}
                for _ in range(4):
                    for s, path in (("butterfly", "/api/models/SPX/butterfly"), ("gex", "/api/gex/SPX")):
                        body = (await http.get(path)).content
                        assert body == await read_model(r, "SPX", s), s
                        seen.setdefault(s, set()).add(orjson.loads(body)["version"])
                    await sim.advance(1)
                assert all(len(v) == 4 for v in seen.values()), seen  # a new version each time
    finally:
        await r.aclose()
