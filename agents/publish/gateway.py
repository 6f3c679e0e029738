"""The gateway: REST, Server-Sent Events and the dashboard, over the published models. Stateless:
run as many as needed behind a load balancer; each reads Redis and never writes models.

* ``GET /api/models/{underlying}/{strategy}`` and ``GET /api/gex/{underlying}``: canonical models.
* ``GET /sse/heatmap/{strategy}?underlying=SPX`` and ``GET /sse/gex?underlying=SPX``: a ``snapshot``
  event, then ``diff`` events, each with ``id:`` = its version. A reconnect with ``Last-Event-ID``
  gets exactly the missed diffs from the diffs stream, or a fresh snapshot if they were trimmed.
* ``GET /healthz``, ``GET /readyz`` (Redis answers, every group exists), ``GET /metrics``.
* ``GET /``: the dashboard (no external CDN).

An optional bearer token (``Authorization: Bearer ...`` or the ``ms_token`` cookie set by ``POST
/auth``; never a query string) guards everything but health and metrics. CORS is an explicit allowlist.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Form, HTTPException, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from sse_starlette.sse import EventSourceResponse

from marketswarm.agents.publish.hub import Hub
from marketswarm.agents.publish.models import load_published, read_model, top_version
from marketswarm.schemas.models import GexModel, HeatmapModel
from marketswarm.topology import streams
from marketswarm.topology.connections import create_redis
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.settings import Settings

TOKEN_COOKIE = "ms_token"
SSE_PING_S = 15
HEATMAPS = {s.value for s in streams.HEATMAP_STRATEGIES}
OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/auth", "/login")


def _static() -> Any:
    return resources.files("marketswarm.agents.publish").joinpath("static")


def sse_event(event: str, version: int, data: bytes) -> bytes:
    """One SSE event, preformatted: the JSON goes out as stored, without a str round trip."""
    return b"event: " + event.encode() + b"\r\nid: " + str(version).encode() + b"\r\ndata: " + data + b"\r\n\r\n"


class SnapshotCache:
    """The last assembled model per (underlying, strategy): concurrent clients share one assembly."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, str], tuple[int, bytes]] = {}

    async def get(self, redis: aioredis.Redis, u: str, strategy: str) -> tuple[int, bytes] | None:
        top = await top_version(redis, u, strategy)
        cached = self.models.get((u, strategy))
        if top is not None and cached is not None and cached[0] == top:
            return cached
        published = await load_published(redis, u, strategy)
        body = published.body(strategy)
        if body is None:
            return None
        self.models[(u, strategy)] = (published.version, body)
        return published.version, body


def create_app(settings: Settings, redis_url: str, metrics: Metrics | None = None) -> FastAPI:
    metrics = metrics or Metrics(REGISTRY)
    token = settings.api_token.get_secret_value() if settings.api_token else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = create_redis(redis_url, block_ms=5000, max_connections=64)
        app.state.redis = redis
        app.state.hub = Hub(redis)
        app.state.snapshots = SnapshotCache()
        try:
            yield
        finally:
            await app.state.hub.close()
            await redis.aclose()

    app = FastAPI(title="MarketSwarm gateway", lifespan=lifespan, docs_url="/api/docs", openapi_url="/api/openapi.json")

    @app.middleware("http")
    async def auth(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if token is None or request.url.path.startswith(OPEN_PATHS):
            return await call_next(request)
        given = request.cookies.get(TOKEN_COOKIE, "")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:]
        if hmac.compare_digest(given.encode(), token.encode()):
            return await call_next(request)
        if request.url.path == "/" or request.url.path.startswith("/static"):
            return RedirectResponse("/login", status_code=303)
        return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401)

    def redis_of(request: Request) -> aioredis.Redis:
        return request.app.state.redis

    def check_underlying(u: str) -> str:
        u = u.upper()
        if not u.isalnum() or len(u) > 12:
            raise HTTPException(404, f"unknown underlying {u!r}")
        return u

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        from marketswarm.topology import graph

        redis = redis_of(request)
        missing = []
        try:
            await redis.ping()
            for spec in graph.agents():
                for u in settings.underlyings:
                    key = spec.reads.key(u)
                    try:
                        groups = await redis.xinfo_groups(key)
                    except aioredis.ResponseError:
                        groups = []
                    if not any(g["name"] in (spec.name, spec.name.encode()) for g in groups):
                        missing.append(f"{spec.name} on {key}")
        except (aioredis.RedisError, OSError) as exc:
            return JSONResponse({"ready": False, "redis": str(exc)}, status_code=503)
        return JSONResponse({"ready": not missing, "missing_groups": missing}, status_code=200 if not missing else 503)

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        from marketswarm.topology.inspect import refresh_group_metrics

        await refresh_group_metrics(
            redis_of(request), metrics, settings.underlyings, settings.publish_interval_ms / 1000
        )
        metrics.sse_clients.labels("all").set(request.app.state.hub.clients())
        registry: CollectorRegistry = metrics.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/underlyings")
    async def underlyings(request: Request) -> list[str]:
        members = await redis_of(request).smembers(streams.underlyings_key())
        return sorted(m.decode() for m in members)

    @app.get("/api/models/{underlying}/{strategy}", response_model=HeatmapModel)
    async def model(request: Request, underlying: str, strategy: str) -> Response:
        if strategy not in HEATMAPS:
            raise HTTPException(404, f"unknown strategy {strategy!r}; one of {sorted(HEATMAPS)}")
        body = await read_model(redis_of(request), check_underlying(underlying), strategy)
        if body is None:
            raise HTTPException(404, f"no published {strategy} model for {underlying} yet")
        return Response(body, media_type="application/json")

    @app.get("/api/gex/{underlying}", response_model=GexModel)
    async def gex(request: Request, underlying: str) -> Response:
        body = await read_model(redis_of(request), check_underlying(underlying), streams.Strategy.GEX)
        if body is None:
            raise HTTPException(404, f"no published GEX for {underlying} yet")
        return Response(body, media_type="application/json")

    async def events(request: Request, u: str, strategy: str) -> AsyncIterator[bytes]:
        redis = redis_of(request)
        hub: Hub = request.app.state.hub
        snapshots: SnapshotCache = request.app.state.snapshots
        key = streams.DIFFS[strategy].key(u)
        last = request.headers.get("last-event-id", "")
        version = int(last) if last.isdigit() else -1
        q = hub.subscribe(key, f"{max(version, 0)}-0".encode())
        try:
            resume = False
            if version >= 0:
                first = await redis.xrange(key, count=1)
                current = await redis.xrevrange(key, count=1)
                first_v = int(first[0][0].split(b"-")[0]) if first else None
                top_v = int(current[0][0].split(b"-")[0]) if current else 0
                # Resumable when the diffs after `version` are all still in the stream.
                resume = first_v is not None and first_v <= version + 1 and version <= top_v
            if not resume:
                snap = await snapshots.get(redis, u, strategy)
                version = 0
                if snap is not None:
                    version = snap[0]
                    yield sse_event("snapshot", version, snap[1])
            for entry_id, fields in await redis.xrange(key, min=b"(" + f"{version}-0".encode()):
                version = int(entry_id.split(b"-")[0])
                yield sse_event("diff", version, fields[b"data"])
            while True:
                item = await q.get()
                if item is None:
                    return  # cut off as too slow: the client reconnects with Last-Event-ID
                entry_id, fields = item
                v = int(entry_id.split(b"-")[0])
                if v <= version:
                    continue
                if v != version + 1:
                    # A gap (the model was rebuilt): start over from a snapshot.
                    snap = await snapshots.get(redis, u, strategy)
                    if snap is not None:
                        version = snap[0]
                        yield sse_event("snapshot", version, snap[1])
                    continue
                version = v
                yield sse_event("diff", v, fields[b"data"])
        finally:
            hub.unsubscribe(key, q)

    @app.get("/sse/heatmap/{strategy}")
    async def sse_heatmap(request: Request, strategy: str, underlying: str = "SPX") -> EventSourceResponse:
        if strategy not in HEATMAPS:
            raise HTTPException(404, f"unknown strategy {strategy!r}")
        return EventSourceResponse(events(request, check_underlying(underlying), strategy), ping=SSE_PING_S)

    @app.get("/sse/gex")
    async def sse_gex(request: Request, underlying: str = "SPX") -> EventSourceResponse:
        return EventSourceResponse(events(request, check_underlying(underlying), streams.Strategy.GEX), ping=SSE_PING_S)

    @app.get("/login", response_class=HTMLResponse)
    async def login() -> str:
        return _static().joinpath("login.html").read_text()  # type: ignore[no-any-return]

    @app.post("/auth")
    async def set_token(token_field: str = Form(alias="token")) -> Response:
        if token is None or not hmac.compare_digest(token_field.encode(), token.encode()):
            return RedirectResponse("/login?failed=1", status_code=303)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(TOKEN_COOKIE, token_field, httponly=True, samesite="strict")
        return resp

    @app.get("/", response_class=HTMLResponse)
    async def dashboard() -> str:
        return _static().joinpath("index.html").read_text()  # type: ignore[no-any-return]

    # follow_symlink: an editable install links the package files into its build tree.
    app.mount("/static", StaticFiles(directory=str(_static()), follow_symlink=True), name="static")
    if settings.cors_origins:
        # Added last, so it wraps the token check: a preflight carries no credentials.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET"],
            allow_headers=["Authorization", "Last-Event-ID"],
            allow_credentials=True,
        )
    return app


async def serve(settings: Settings, redis_url: str, stop: asyncio.Event) -> None:
    import uvicorn

    app = create_app(settings, redis_url)
    config = uvicorn.Config(
        app, host=settings.gateway_host, port=settings.gateway_port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None
    task = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    await task
