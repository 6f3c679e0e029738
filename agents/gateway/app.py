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
  Sent gzip'd when the client accepts it (agents/gateway/sse.py). ``GET /sse/models/{name}?underlying=
  SPX`` is the same for any model by name; a derived model's snapshot and diffs carry the whole
  document as their ``header``.
* ``GET /sse/tab?feeds=SPX:butterfly@1234,SPX:gex``: every feed of a dashboard tab on one connection,
  each resuming after its own version (agents/gateway/feeds.py).
* ``GET /healthz``, ``GET /readyz`` (Redis answers, every group exists), ``GET /metrics``.
* ``GET /``: the dashboard; ``GET /api/docs``: Swagger UI. No CDN: their libraries are vendored.

Each kind of work has its own Redis budget, bounded and queued: REST and SSE reads share one pool
whose commands wait up to ``POOL_WAIT_S`` for a connection (then 503 and ``Retry-After``); health and
metrics have their own small pool and are computed at most once per ``HEALTH_CACHE_S`` whoever asks;
the SSE feed readers have theirs. An unknown underlying or strategy is a 404 before any Redis work.
SSE connections are admitted up to ``sse_max_clients`` in all (then 503) and ``sse_max_per_address``
per client address (then 429), counted as they are admitted (agents/gateway/limits.py). REST JSON,
snapshots and their compression are built off the event loop, once per version (feeds.py).

Safe by default: a gateway bound beyond loopback refuses to start without a bearer token unless
``gateway_no_auth`` says so (``check_exposure``). The token comes as ``Authorization: Bearer ...`` or
the ``ms_token`` cookie set by ``POST /auth`` (HttpOnly, SameSite=Strict, Secure over TLS, expiring;
the sign-in rate limited per address), never in a query string, and guards everything but health and
metrics. CORS is an explicit allowlist (never ``*``: credentials are allowed). The dashboard's pages
forbid inline script (``CSP``). Error bodies and ``/readyz`` name no hosts or ports: the logs do.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
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

from marketswarm.agents.gateway.apidocs import add_docs
from marketswarm.agents.gateway.feeds import (
    FeedSource,
    ModelCache,
    TabRequestError,
    model_feed,
    parse_tab,
    parse_version,
    tab,
)
from marketswarm.agents.gateway.hub import Hub
from marketswarm.agents.gateway.limits import Admission, Attempts
from marketswarm.agents.gateway.quotes import read_quotes
from marketswarm.agents.gateway.sse import LargeJson, Segment, SseResponse, accepts_gzip
from marketswarm.schemas.models import GexModel, ModelOut
from marketswarm.topology import observe, streams
from marketswarm.topology.agent import AgentSpec
from marketswarm.topology.connections import create_redis
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.settings import Settings

log = logging.getLogger(__name__)

TOKEN_COOKIE = "ms_token"
HEATMAPS = {s.value for s in streams.HEATMAP_STRATEGIES}
DOCUMENTS = {*HEATMAPS, *streams.DERIVED}  # served at /api/models/{underlying}/{name}
MAX_QUOTES = 8  # contracts per /api/quotes request (a tile has at most 3 legs)
OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/auth", "/login")
API_CONNECTIONS = 48  # REST and SSE snapshot/resume reads
HEALTH_CONNECTIONS = 4  # /readyz, /metrics and the known-underlyings refresh
POOL_WAIT_S = 5.0  # a request waits this long for a connection of its budget, then gets a 503
HEALTH_CACHE_S = 1.0  # /readyz and /metrics' Redis reads are shared by every request in this window
KNOWN_CACHE_S = 5.0  # the published underlyings, re-read at most this often
COOKIE_MAX_AGE_S = 12 * 3600  # a sign-in lasts a trading day
AUTH_ATTEMPTS = 10  # sign-in attempts per address per AUTH_WINDOW_S; beyond, a 429
AUTH_WINDOW_S = 60.0
# The dashboard's pages: scripts only from this origin (no inline script, no eval); inline style
# attributes are allowed (the charts and gauges position elements with them).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ExposedWithoutTokenError(RuntimeError):
    """Raised by ``check_exposure`` when the gateway would listen beyond loopback without a token and
    nobody said ``--no-auth``."""


def check_exposure(settings: Settings) -> None:
    """Refuse a gateway that anyone on the network could read without a token, unless asked for."""
    host = settings.gateway_host
    if settings.api_token is None and not settings.gateway_no_auth and host not in LOOPBACK:
        raise ExposedWithoutTokenError(
            f"the gateway would listen on {host} without a token: set MARKETSWARM_API_TOKEN, bind "
            "MARKETSWARM_GATEWAY_HOST=127.0.0.1, or say --no-auth (MARKETSWARM_GATEWAY_NO_AUTH=1) behind "
            "an authenticating proxy"
        )


def _static() -> Any:
    return resources.files("marketswarm.agents.gateway").joinpath("static")


def page(name: str) -> HTMLResponse:
    """One of the dashboard's pages, with its Content-Security-Policy (set here, on the pages, rather
    than by a middleware every SSE event would pass through)."""
    return HTMLResponse(_static().joinpath(name).read_text(), headers=PAGE_HEADERS)


def create_app(
    settings: Settings, redis_url: str, agents: Sequence[AgentSpec], metrics: Metrics | None = None
) -> FastAPI:
    metrics = metrics or Metrics(REGISTRY)
    token = settings.api_token.get_secret_value() if settings.api_token else None
    sign_ins = Attempts(AUTH_ATTEMPTS, AUTH_WINDOW_S)

    feeds_max = len(settings.underlyings) * len(streams.MODELS) + 8  # one blocking read per feed

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        api = create_redis(redis_url, max_connections=API_CONNECTIONS, wait_s=POOL_WAIT_S)
        health = create_redis(redis_url, max_connections=HEALTH_CONNECTIONS, wait_s=POOL_WAIT_S)
        feeds = create_redis(redis_url, block_ms=5000, max_connections=feeds_max)
        app.state.redis, app.state.health = api, health
        app.state.hub = Hub(feeds)
        app.state.models = ModelCache()
        app.state.admission = Admission(settings.sse_max_clients, settings.sse_max_per_address)
        app.state.ready = Recent(HEALTH_CACHE_S, lambda: _readiness(health, settings, agents))
        app.state.scrape = Recent(HEALTH_CACHE_S, lambda: _scrape(health, metrics, settings, agents))
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
        # A budget's connections all busy past POOL_WAIT_S, or Redis unreachable: retry shortly. The
        # body names no host or port; the log says what happened.
        log.warning("%s %s: Redis: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": "busy or the store is unavailable; retry"}, status_code=503, headers={"Retry-After": "1"}
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
        metrics.sse_clients.labels("all").set(request.app.state.admission.open)
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
        return LargeJson(body)

    @app.get("/api/gex/{underlying}", response_model=GexModel)
    async def gex(request: Request, underlying: str) -> Response:
        u = await check_underlying(request, underlying)
        body = await models_of(request).body(redis_of(request), u, streams.Strategy.GEX)
        if body is None:
            raise HTTPException(404, f"no published GEX for {underlying} yet")
        return LargeJson(body)

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
        return LargeJson(body)

    def feed_source(request: Request) -> FeedSource:
        return FeedSource(redis_of(request), request.app.state.hub, models_of(request), settings.sse_max_resume_diffs)

    def sse(request: Request, segments: Callable[[], AsyncIterator[Segment]]) -> SseResponse:
        """Admit the connection (counted before its response starts, released when it ends) and stream it."""
        admission: Admission = request.app.state.admission
        address = request.client.host if request.client else "unknown"
        refused = admission.admit(address)
        if refused is not None:
            over_total = admission.open >= admission.total
            metrics.sse_refused.labels("total" if over_total else "address").inc()
            raise HTTPException(503 if over_total else 429, refused, {"Retry-After": "5"})
        return SseResponse(segments(), accepts_gzip(request), on_close=lambda: admission.release(address))

    def one_feed(request: Request, u: str, strategy: str) -> SseResponse:
        version = parse_version(request.headers.get("last-event-id", ""))
        return sse(request, lambda: model_feed(feed_source(request), u, strategy, version))

    @app.get("/sse/heatmap/{strategy}")
    async def sse_heatmap(request: Request, strategy: str, underlying: str = "SPX") -> SseResponse:
        if strategy not in HEATMAPS:
            raise HTTPException(404, f"unknown strategy {strategy!r}")
        return one_feed(request, await check_underlying(request, underlying), strategy)

    @app.get("/sse/models/{name}")
    async def sse_model(request: Request, name: str, underlying: str = "SPX") -> SseResponse:
        """Any published model by name (the heatmaps, ``gex`` and the derived models): snapshot, then diffs."""
        if name not in streams.MODELS:
            raise HTTPException(404, f"unknown model {name!r}; one of {list(streams.MODELS)}")
        return one_feed(request, await check_underlying(request, underlying), name)

    @app.get("/sse/gex")
    async def sse_gex(request: Request, underlying: str = "SPX") -> SseResponse:
        return one_feed(request, await check_underlying(request, underlying), streams.Strategy.GEX)

    @app.get("/sse/tab")
    async def sse_tab(request: Request, feeds: str) -> SseResponse:
        """Every feed a dashboard tab shows, on one connection (a browser allows six per host).
        ``feeds=SPX:butterfly@1234,SPX:market_mode,NDX:gex`` names each feed, with the version to resume
        after (none: from a snapshot). Events are the per-feed endpoints' events, without ``id:``,
        each with a first ``data:`` line naming its feed; to resume, reconnect with every feed's last
        version (agents/gateway/feeds.py)."""
        try:
            wanted = parse_tab(feeds, set(streams.MODELS))
        except TabRequestError as exc:
            raise HTTPException(422, str(exc)) from exc
        checked = [(await check_underlying(request, u), m, v) for u, m, v in wanted]
        return sse(request, lambda: tab(feed_source(request), checked))

    @app.get("/login", response_class=HTMLResponse)
    async def login() -> HTMLResponse:
        return page("login.html")

    @app.post("/auth")
    async def set_token(request: Request, token_field: str = Form(alias="token")) -> Response:
        wait_s = sign_ins.allow(request.client.host if request.client else "unknown")
        if wait_s is not None:
            metrics.sse_refused.labels("sign-in").inc()
            raise HTTPException(429, "too many sign-in attempts; wait", {"Retry-After": str(max(1, round(wait_s)))})
        if token is None or not hmac.compare_digest(token_field.encode(), token.encode()):
            return RedirectResponse("/login?failed=1", status_code=303)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(
            TOKEN_COOKIE,
            token_field,
            max_age=COOKIE_MAX_AGE_S,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",  # behind TLS (uvicorn reads X-Forwarded-Proto from its proxy)
        )
        return resp

    @app.get("/", response_class=HTMLResponse)
    async def dashboard() -> HTMLResponse:
        return page("index.html")

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


async def _readiness(
    redis: aioredis.Redis, settings: Settings, agents: Sequence[AgentSpec]
) -> tuple[dict[str, Any], int]:
    try:
        await redis.ping()
        missing = await observe.missing_groups(redis, settings.underlyings, agents)
    except (RedisError, OSError) as exc:
        log.warning("readiness: Redis: %s", exc)
        return {"ready": False, "redis": "unavailable"}, 503
    return {"ready": not missing, "missing_groups": missing}, 200 if not missing else 503


async def _scrape(redis: aioredis.Redis, metrics: Metrics, settings: Settings, agents: Sequence[AgentSpec]) -> None:
    await refresh_group_metrics(redis, metrics, settings.underlyings, agents, settings.publish_interval_ms / 1000)


async def refresh_group_metrics(
    redis: aioredis.Redis,
    metrics: Metrics,
    underlyings: Sequence[str],
    agents: Sequence[AgentSpec],
    publish_interval_s: float | None = None,
) -> None:
    """Set the lag/pending/length gauges from XINFO, and model ages (scrape time)."""
    us = await observe.known_underlyings(redis, underlyings)
    now_ns = time.time_ns()
    for u in us:
        for s in streams.STRATEGIES:
            raw = await redis.hget(streams.publish_state_key(u, s), streams.STATE_FIELD)
            if raw is None:
                continue
            asof = orjson.loads(raw).get("asof_ns")
            if asof:
                metrics.model_age.labels(u, s).set(max(0.0, (now_ns - asof) / 1e9))
            if publish_interval_s is not None:
                metrics.publish_interval.labels(u, s).set(publish_interval_s)
    for row in await observe.group_rows(redis, us, agents):
        if row["exists"]:
            if row["lag"] is not None:
                metrics.group_lag.labels(row["agent"], row["stream"]).set(row["lag"])
            metrics.group_pending.labels(row["agent"], row["stream"]).set(row["pending"])
    for row in await observe.stream_rows(redis, us):
        metrics.stream_length.labels(row["stream"]).set(row["length"])


async def _published(redis: aioredis.Redis, settings: Settings) -> frozenset[str]:
    return frozenset(m.decode() for m in await redis.smembers(streams.underlyings_key())) | set(settings.underlyings)


async def serve(settings: Settings, redis_url: str, agents: Sequence[AgentSpec], stop: asyncio.Event) -> None:
    import uvicorn

    check_exposure(settings)
    app = create_app(settings, redis_url, agents)
    config = uvicorn.Config(
        app, host=settings.gateway_host, port=settings.gateway_port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None
    task = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    await task
