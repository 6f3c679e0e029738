"""The gateway: REST, Server-Sent Events and the dashboard, over the published models. Stateless:
run as many as needed behind a load balancer; each reads Redis and never writes models.

* ``GET /api/models/{underlying}/{strategy}`` and ``GET /api/gex/{underlying}``: canonical models,
  per-tile JSON built from the columns once per version and cached; the derived models
  (``market_mode``, ``gravity``, ``intent``, ``best_flies``) at the first path too.
* ``GET /api/geometry/{underlying}/{strategy}``: the current epoch's geometry (the tiles' labels);
  ``GET /api/quotes/{underlying}?epoch=E&symbols=A,B,C``: legs' quotes (the dashboard's hover).
* ``GET /sse/heatmap/{strategy}?underlying=SPX`` and ``GET /sse/gex?underlying=SPX``: columns. A
  ``geometry`` event (the labels, once per epoch), a ``snapshot`` (every position's numbers), then
  ``diff`` events (changed positions and their numbers), each with ``id:`` = its version; a diff
  that starts a new epoch comes after that epoch's ``geometry``. A reconnect with ``Last-Event-ID``
  gets exactly the missed diffs from the diffs stream, or a fresh snapshot if they were trimmed.
  Sent gzip'd when the client accepts it (agents/publish/sse.py). ``GET /sse/models/{name}?underlying=
  SPX`` is the same for any model by name; a derived model's snapshot and diffs carry the whole
  document as their ``header``.
* ``GET /healthz``, ``GET /readyz`` (Redis answers, every group exists), ``GET /metrics``.
* ``GET /``: the dashboard; ``GET /api/docs``: Swagger UI. No CDN: their libraries are vendored.

Each kind of work has its own Redis budget, bounded and queued: REST and SSE reads share one pool
whose commands wait up to ``POOL_WAIT_S`` for a connection (then 503 and ``Retry-After``); health and
metrics have their own small pool and are computed at most once per ``HEALTH_CACHE_S`` whoever asks;
the SSE feed readers have theirs. An unknown underlying or strategy is a 404 before any Redis work,
and SSE clients beyond ``MAX_SSE_CLIENTS`` get a 503. A resume reads its missed diffs in pages of
``RESUME_PAGE``; more than ``sse_max_resume_diffs`` behind, or an id that is not a version, it gets a
fresh snapshot instead.

An optional bearer token (``Authorization: Bearer ...`` or the ``ms_token`` cookie set by ``POST
/auth``; never a query string) guards everything but health and metrics. CORS is an explicit allowlist.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI, Form, HTTPException, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from redis.exceptions import RedisError

from marketswarm.agents import catalog
from marketswarm.agents.publish.apidocs import add_docs
from marketswarm.agents.publish.assemble import diff_json, geometry_json
from marketswarm.agents.publish.hub import Hub
from marketswarm.agents.publish.published import GapError, Published, diff_version
from marketswarm.agents.publish.reading import catch_up, load_published, read_quotes, top_version
from marketswarm.agents.publish.sse import Segment, SseResponse, accepts_gzip, sse_event
from marketswarm.schemas import codec
from marketswarm.schemas.models import GexModel, ModelOut
from marketswarm.topology import observe, streams
from marketswarm.topology.connections import create_redis
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.settings import Settings

TOKEN_COOKIE = "ms_token"
HEATMAPS = {s.value for s in streams.HEATMAP_STRATEGIES}
DOCUMENTS = {*HEATMAPS, *streams.DERIVED}  # served at /api/models/{underlying}/{name}
MAX_QUOTES = 8  # contracts per /api/quotes request (a tile has at most 3 legs)
OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/auth", "/login")
RENDERED_DIFFS = 256  # diffs kept rendered as SSE events, shared by every client (and reconnects)
API_CONNECTIONS = 48  # REST and SSE snapshot/resume reads
HEALTH_CONNECTIONS = 4  # /readyz, /metrics and the known-underlyings refresh
POOL_WAIT_S = 5.0  # a request waits this long for a connection of its budget, then gets a 503
HEALTH_CACHE_S = 1.0  # /readyz and /metrics' Redis reads are shared by every request in this window
KNOWN_CACHE_S = 5.0  # the published underlyings, re-read at most this often
MAX_SSE_CLIENTS = 1000  # SSE clients per gateway process; beyond, a 503
RESUME_PAGE = 200  # missed diffs read per XRANGE
MAX_VERSION_DIGITS = 18  # a Last-Event-ID longer than this is no version of ours (int64)


def _static() -> Any:
    return resources.files("marketswarm.agents.publish").joinpath("static")


@dataclass
class _Model:
    """One (underlying, strategy) as the gateway serves it: the published columns, followed
    incrementally, and what was built from them, each once per version (or epoch)."""

    published: Published
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    body: tuple[int, bytes] | None = None  # (version, REST JSON)
    snapshot: tuple[int, Segment] | None = None  # (version, SSE geometry + snapshot events)
    geometry: tuple[str, bytes] | None = None  # (epoch, geometry JSON)


class ModelCache:
    """Published models kept current by applying new diffs, and their JSON built once per version:
    concurrent readers share one copy and one build."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, str], _Model] = {}
        self.rendered: OrderedDict[tuple[str, bytes], Segment] = OrderedDict()

    async def current(self, redis: aioredis.Redis, u: str, strategy: str) -> _Model | None:
        m = self.models.get((u, strategy))
        if m is None:
            m = self.models[(u, strategy)] = _Model(Published(strategy=strategy))
        async with m.lock:
            top = await top_version(redis, u, strategy)
            if top is None:
                return None
            if top != m.published.version:
                try:
                    if top < m.published.version or m.published.header is None:
                        raise GapError("rebuilt")
                    await catch_up(redis, u, m.published, strict=True)
                except GapError:  # a rebuilt model, or diffs trimmed past ours: start from its checkpoint
                    m.published = await load_published(redis, u, strategy)
        return m if m.published.header is not None else None

    async def body(self, redis: aioredis.Redis, u: str, strategy: str) -> bytes | None:
        m = await self.current(redis, u, strategy)
        if m is None:
            return None
        p = m.published
        if m.body is None or m.body[0] != p.version:
            m.body = (p.version, p.body() or b"")
        return m.body[1]

    async def geometry(self, redis: aioredis.Redis, u: str, strategy: str) -> bytes | None:
        m = await self.current(redis, u, strategy)
        if m is None or m.published.geometry is None:
            return None
        g = m.published.geometry
        if m.geometry is None or m.geometry[0] != g.epoch:
            m.geometry = (g.epoch, geometry_json(g))
        return m.geometry[1]

    async def snapshot(self, redis: aioredis.Redis, u: str, strategy: str) -> tuple[int, Segment] | None:
        """The SSE events that start a client: the geometry, then the snapshot, with the version."""
        m = await self.current(redis, u, strategy)
        if m is None:
            return None
        p = m.published
        if m.snapshot is None or m.snapshot[0] != p.version:
            geometry = await self.geometry(redis, u, strategy) or b"null"
            events = sse_event("geometry", p.version, geometry) + sse_event("snapshot", p.version, p.snapshot() or b"")
            m.snapshot = (p.version, Segment(events))
        return m.snapshot

    def render(self, key: str, entry_id: bytes, fields: dict[bytes, bytes]) -> Segment:
        """A diffs entry as SSE events (its epoch's geometry first when it starts one), built once."""
        cached = self.rendered.get((key, entry_id))
        if cached is not None:
            return cached
        diff = codec.decode(streams.Payload.DIFF, fields)
        raw = sse_event("diff", diff.version, diff_json(diff))
        if diff.reset and diff.geometry is not None:
            raw = sse_event("geometry", diff.version, geometry_json(diff.geometry)) + raw
        seg = self.rendered[(key, entry_id)] = Segment(raw)
        while len(self.rendered) > RENDERED_DIFFS:
            self.rendered.popitem(last=False)
        return seg


def create_app(settings: Settings, redis_url: str, metrics: Metrics | None = None) -> FastAPI:
    metrics = metrics or Metrics(REGISTRY)
    token = settings.api_token.get_secret_value() if settings.api_token else None

    feeds_max = len(settings.underlyings) * len(streams.MODELS) + 8  # one blocking read per feed

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        api = create_redis(redis_url, max_connections=API_CONNECTIONS, wait_s=POOL_WAIT_S)
        health = create_redis(redis_url, max_connections=HEALTH_CONNECTIONS, wait_s=POOL_WAIT_S)
        feeds = create_redis(redis_url, block_ms=5000, max_connections=feeds_max)
        app.state.redis, app.state.health = api, health
        app.state.hub = Hub(feeds)
        app.state.models = ModelCache()
        app.state.ready = Recent(HEALTH_CACHE_S, lambda: _readiness(health, settings))
        app.state.scrape = Recent(HEALTH_CACHE_S, lambda: _scrape(health, metrics, settings))
        app.state.known = Recent(KNOWN_CACHE_S, lambda: _published(health, settings))
        try:
            yield
        finally:
            await app.state.hub.close()
            for client in (api, health, feeds):
                await client.aclose()

    app = FastAPI(
        title="MarketSwarm gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/api/openapi.json"
    )

    add_docs(app)

    @app.exception_handler(RedisError)
    async def busy(request: Request, exc: RedisError) -> JSONResponse:
        # A budget's connections all busy past POOL_WAIT_S, or Redis unreachable: retry shortly.
        return JSONResponse(
            {"detail": f"busy or Redis unavailable, retry: {exc}"}, status_code=503, headers={"Retry-After": "1"}
        )

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

    async def check_underlying(request: Request, u: str) -> str:
        """The underlying if it is configured or published; a 404 otherwise, before any Redis work of
        the request (the published set is shared, re-read at most every KNOWN_CACHE_S)."""
        u = u.upper()
        if u in settings.underlyings:
            return u
        if not u.isascii() or not u.isalnum() or len(u) > 12 or u not in await request.app.state.known.get():
            raise HTTPException(404, f"unknown underlying {u[:20]!r}")
        return u

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        body, status = await request.app.state.ready.get()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        await request.app.state.scrape.get()
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

    def models_of(request: Request) -> ModelCache:
        return request.app.state.models  # type: ignore[no-any-return]

    @app.get("/api/models/{underlying}/{strategy}", response_model=ModelOut)
    async def model(request: Request, underlying: str, strategy: str) -> Response:
        """A heatmap (``single``, ``vertical``, ``butterfly``) or a derived model (``market_mode``,
        ``gravity``, ``intent``, ``best_flies``)."""
        if strategy not in DOCUMENTS:
            raise HTTPException(404, f"unknown model {strategy!r}; one of {sorted(DOCUMENTS)}")
        body = await models_of(request).body(redis_of(request), await check_underlying(request, underlying), strategy)
        if body is None:
            raise HTTPException(404, f"no published {strategy} model for {underlying} yet")
        return Response(body, media_type="application/json")

    @app.get("/api/gex/{underlying}", response_model=GexModel)
    async def gex(request: Request, underlying: str) -> Response:
        u = await check_underlying(request, underlying)
        body = await models_of(request).body(redis_of(request), u, streams.Strategy.GEX)
        if body is None:
            raise HTTPException(404, f"no published GEX for {underlying} yet")
        return Response(body, media_type="application/json")

    @app.get("/api/quotes/{underlying}")
    async def quotes(request: Request, underlying: str, epoch: str, symbols: str) -> Response:
        """Bid, ask and event time of up to MAX_QUOTES contracts in an epoch's state: the hover's legs."""
        u = await check_underlying(request, underlying)
        wanted = [x.strip().upper() for x in symbols.split(",") if x.strip()]
        if not wanted or len(wanted) > MAX_QUOTES or not all(x.isascii() and x.isalnum() for x in wanted):
            raise HTTPException(422, f"symbols: 1 to {MAX_QUOTES} comma-separated OCC symbols")
        if not (epoch.isascii() and epoch.isalnum() and len(epoch) <= 32):
            raise HTTPException(422, "epoch: the epoch id of the geometry the legs come from")
        found = await read_quotes(redis_of(request), u, epoch, wanted)
        return Response(orjson.dumps({"underlying": u, "epoch": epoch, "quotes": found}), media_type="application/json")

    @app.get("/api/geometry/{underlying}/{strategy}")
    async def geometry(request: Request, underlying: str, strategy: str) -> Response:
        """The labels of the current epoch's positions: series, contracts, and per position its series,
        strike, width and legs (heatmaps) or strike (``gex``). SSE sends the same as ``geometry``."""
        if strategy not in streams.STRATEGIES:
            raise HTTPException(404, f"unknown strategy {strategy!r}; one of {list(streams.STRATEGIES)}")
        u = await check_underlying(request, underlying)
        body = await models_of(request).geometry(redis_of(request), u, strategy)
        if body is None:
            raise HTTPException(404, f"no published {strategy} model for {underlying} yet")
        return Response(body, media_type="application/json")

    async def events(request: Request, u: str, strategy: str) -> AsyncIterator[Segment]:
        redis = redis_of(request)
        hub: Hub = request.app.state.hub
        models = models_of(request)
        key = streams.DIFFS[strategy].key(u)
        version = _version(request.headers.get("last-event-id", ""))
        q = await hub.subscribe(key)  # before the history is read: nothing falls between the two
        try:
            resume = False
            if version >= 0:
                first = await redis.xrange(key, count=1)
                current = await redis.xrevrange(key, count=1)
                first_v = diff_version(first[0][0]) if first else None
                top_v = diff_version(current[0][0]) if current else 0
                # Resumable when the diffs after `version` are all still in the stream, and few
                # enough that a snapshot would not be cheaper.
                resume = first_v is not None and first_v <= version + 1 and version <= top_v
                resume = resume and top_v - version <= settings.sse_max_resume_diffs
            if not resume:
                snap = await models.snapshot(redis, u, strategy)
                version = 0
                if snap is not None:
                    version = snap[0]
                    yield snap[1]
            sent = 0
            while sent <= settings.sse_max_resume_diffs:  # the missed diffs, a page at a time
                page = await redis.xrange(key, min=b"(" + f"{version}-0".encode(), count=RESUME_PAGE)
                for entry_id, fields in page:
                    version = diff_version(entry_id)
                    yield models.render(key, entry_id, fields)
                sent += len(page)
                if len(page) < RESUME_PAGE:
                    break
            while True:
                item = await q.get()
                if item is None:
                    return  # cut off as too slow: the client reconnects with Last-Event-ID
                entry_id, fields = item
                v = diff_version(entry_id)
                if v <= version:
                    continue
                if v != version + 1:
                    # A gap (the model was rebuilt): start over from a snapshot.
                    snap = await models.snapshot(redis, u, strategy)
                    if snap is not None:
                        version = snap[0]
                        yield snap[1]
                    continue
                version = v
                yield models.render(key, entry_id, fields)
        finally:
            hub.unsubscribe(key, q)

    def sse(request: Request, u: str, strategy: str) -> SseResponse:
        if request.app.state.hub.clients() >= MAX_SSE_CLIENTS:
            raise HTTPException(503, f"{MAX_SSE_CLIENTS} live clients already; retry later", {"Retry-After": "5"})
        return SseResponse(events(request, u, strategy), accepts_gzip(request))

    @app.get("/sse/heatmap/{strategy}")
    async def sse_heatmap(request: Request, strategy: str, underlying: str = "SPX") -> SseResponse:
        if strategy not in HEATMAPS:
            raise HTTPException(404, f"unknown strategy {strategy!r}")
        return sse(request, await check_underlying(request, underlying), strategy)

    @app.get("/sse/models/{name}")
    async def sse_model(request: Request, name: str, underlying: str = "SPX") -> SseResponse:
        """Any published model by name (the heatmaps, ``gex`` and the derived models): snapshot, then diffs."""
        if name not in streams.MODELS:
            raise HTTPException(404, f"unknown model {name!r}; one of {list(streams.MODELS)}")
        return sse(request, await check_underlying(request, underlying), name)

    @app.get("/sse/gex")
    async def sse_gex(request: Request, underlying: str = "SPX") -> SseResponse:
        return sse(request, await check_underlying(request, underlying), streams.Strategy.GEX)

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


def _version(last_event_id: str) -> int:
    """A Last-Event-ID as a version; -1 (a fresh snapshot) for anything that is not one."""
    if last_event_id.isascii() and last_event_id.isdigit() and len(last_event_id) <= MAX_VERSION_DIGITS:
        return int(last_event_id)
    return -1


class Recent:
    """A value computed at most once per ``ttl_s`` and shared by every concurrent caller, so a
    burst of requests costs Redis one computation."""

    def __init__(self, ttl_s: float, compute: Callable[[], Awaitable[Any]]) -> None:
        self.ttl_s = ttl_s
        self.compute = compute
        self.lock = asyncio.Lock()
        self.at: float | None = None
        self.value: Any = None

    async def get(self) -> Any:
        async with self.lock:
            now = time.monotonic()
            if self.at is None or now - self.at >= self.ttl_s:
                self.value = await self.compute()
                self.at = time.monotonic()
            return self.value


async def _readiness(redis: aioredis.Redis, settings: Settings) -> tuple[dict[str, Any], int]:
    try:
        await redis.ping()
        missing = await observe.missing_groups(redis, settings.underlyings, catalog.agents())
    except (RedisError, OSError) as exc:
        return {"ready": False, "redis": str(exc)}, 503
    return {"ready": not missing, "missing_groups": missing}, 200 if not missing else 503


async def _scrape(redis: aioredis.Redis, metrics: Metrics, settings: Settings) -> None:
    await refresh_group_metrics(redis, metrics, settings.underlyings, settings.publish_interval_ms / 1000)


async def refresh_group_metrics(
    redis: aioredis.Redis, metrics: Metrics, underlyings: Sequence[str], publish_interval_s: float | None = None
) -> None:
    """Set the lag/pending/length gauges from XINFO, and model ages (scrape time)."""
    us = await observe.known_underlyings(redis, underlyings)
    now_ns = time.time_ns()
    for u in us:
        for s in streams.STRATEGIES:
            raw = await redis.hget(streams.publish_state_key(u, s), "state")
            if raw is None:
                continue
            asof = orjson.loads(raw).get("asof_ns")
            if asof:
                metrics.model_age.labels(u, s).set(max(0.0, (now_ns - asof) / 1e9))
            if publish_interval_s is not None:
                metrics.publish_interval.labels(u, s).set(publish_interval_s)
    for row in await observe.group_rows(redis, us, catalog.agents()):
        if row["exists"]:
            if row["lag"] is not None:
                metrics.group_lag.labels(row["agent"], row["stream"]).set(row["lag"])
            metrics.group_pending.labels(row["agent"], row["stream"]).set(row["pending"])
    for row in await observe.stream_rows(redis, us):
        metrics.stream_length.labels(row["stream"]).set(row["length"])


async def _published(redis: aioredis.Redis, settings: Settings) -> frozenset[str]:
    return frozenset(m.decode() for m in await redis.smembers(streams.underlyings_key())) | set(settings.underlyings)


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
