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
* ``?at=TIME`` on the model routes, ``GET /api/columns/{underlying}/{strategy}?at=TIME`` and ``GET
  /api/history/{underlying}/levels``: the day as a timeline (agents/gateway/timeline.py);
  ``GET /sse/history/{underlying}/levels/{model}`` appends new level points.
* ``GET /api/alerts?underlying=&since=`` and ``GET /sse/alerts``: the alerts (agents/gateway/vigil.py).
* ``GET /healthz``, ``GET /readyz`` (Redis answers, every group exists), ``GET /metrics``.
* ``GET /``: the dashboard; ``GET /api/docs``: Swagger UI. No CDN: their libraries are vendored.

Each kind of work has its own Redis budget, bounded and queued: REST and SSE reads share one pool
whose commands wait up to ``POOL_WAIT_S`` for a connection (then 503 and ``Retry-After``); health and
metrics have their own small pool and are computed at most once per ``HEALTH_CACHE_S`` whoever asks;
the SSE feed readers have theirs. Every REST, readiness or metrics request answers within
``REQUEST_BUDGET_S`` (else 503 and ``Retry-After``: a paused store never holds a client; limits.Budget),
and SSE clients are told when the store stalls (hub.py). An unknown underlying or strategy is a 404
before any Redis work.
SSE connections are admitted up to ``sse_max_clients`` in all (then 503) and ``sse_max_per_address``
per client address (then 429), counted as they are admitted (agents/gateway/limits.py). REST JSON,
snapshots and their compression are built off the event loop, once per version (feeds.py).

Safe by default: a gateway bound beyond loopback refuses to start without a bearer token unless
``gateway_no_auth`` says so; the token, the sign-in and the pages' CSP are agents/gateway/access.py.
CORS is an explicit allowlist (never ``*``: credentials are allowed). Error bodies and ``/readyz`` name
no hosts or ports: the logs do.

The routes are modules of routers: access.py (sign-in, pages), health.py, rest.py and streaming.py
(SSE); what they share is one ``Gateway`` (state.py), built here in the app's lifespan.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import REGISTRY
from redis.exceptions import RedisError

from marketswarm.agents.gateway import access, health, rest, risk, streaming, timeline, vigil
from marketswarm.agents.gateway.access import AUTH_ATTEMPTS, AUTH_WINDOW_S, check_exposure, static_files
from marketswarm.agents.gateway.apidocs import add_docs
from marketswarm.agents.gateway.feeds import ModelCache, cancel_all
from marketswarm.agents.gateway.hub import Hub
from marketswarm.agents.gateway.limits import Admission, Attempts, Budget
from marketswarm.agents.gateway.state import Gateway, Recent
from marketswarm.topology import streams
from marketswarm.topology.agent import AgentSpec
from marketswarm.topology.connections import create_redis
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.settings import Settings

log = logging.getLogger(__name__)

API_CONNECTIONS = 48  # REST and SSE snapshot/resume reads
HEALTH_CONNECTIONS = 4  # /readyz, /metrics and the known-underlyings refresh
POOL_WAIT_S = 5.0  # a request waits this long for a connection of its budget, then gets a 503
# A REST, readiness or metrics request not answered within this long gets a 503 (limits.Budget):
# a paused or unreachable store never holds a client longer.
REQUEST_BUDGET_S = 5.0
BUDGETED = ("/api/", "/readyz", "/metrics")
KNOWN_CACHE_S = 5.0  # the published underlyings, re-read at most this often


def create_app(
    settings: Settings, redis_url: str, agents: Sequence[AgentSpec], metrics: Metrics | None = None
) -> FastAPI:
    """The gateway over the Redis at ``redis_url``; ``agents`` is the topology (readiness, group gauges)."""
    metrics = metrics or Metrics(REGISTRY)
    token = settings.api_token.get_secret_value() if settings.api_token else None
    feeds_max = len(settings.underlyings) * len(streams.MODELS) + 8  # one blocking read per feed

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        api = create_redis(redis_url, max_connections=API_CONNECTIONS, wait_s=POOL_WAIT_S)
        probes = create_redis(redis_url, max_connections=HEALTH_CONNECTIONS, wait_s=POOL_WAIT_S)
        feeds = create_redis(redis_url, block_ms=5000, max_connections=feeds_max)
        app.state.gateway = Gateway(
            settings=settings,
            metrics=metrics,
            agents=agents,
            token=token,
            redis=api,
            health=probes,
            hub=Hub(feeds),
            models=ModelCache(),
            admission=Admission(settings.sse_max_clients, settings.sse_max_per_address),
            sign_ins=Attempts(AUTH_ATTEMPTS, AUTH_WINDOW_S),
            ready=Recent(health.HEALTH_CACHE_S, lambda: health.readiness(probes, settings, agents)),
            scrape=Recent(health.HEALTH_CACHE_S, lambda: health.scrape(probes, metrics, settings, agents)),
            known=Recent(KNOWN_CACHE_S, lambda: health.published_underlyings(probes, settings)),
        )
        try:
            yield
        finally:
            await app.state.gateway.hub.close()
            for client in (api, probes, feeds):
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

    app.middleware("http")(access.authenticate)
    for router in (
        health.router,
        rest.router,
        risk.router,
        timeline.router,
        streaming.router,
        vigil.router,
        access.router,
    ):
        app.include_router(router)
    # follow_symlink: an editable install links the package files into its build tree.
    app.mount("/static", StaticFiles(directory=str(static_files()), follow_symlink=True), name="static")
    if settings.cors_origins:
        # Added after the token check, so it wraps it: a preflight carries no credentials.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET"],
            allow_headers=["Authorization", "Last-Event-ID"],
            allow_credentials=True,
        )

    def late(path: str) -> None:
        log.warning("%s: no answer from the store within %.0f s; answered 503", path, REQUEST_BUDGET_S)
        metrics.sse_refused.labels("budget").inc()

    async def abandon(task: asyncio.Task[None]) -> None:
        await cancel_all([task])

    # Outermost: the time a request takes, whatever it waits for inside.
    app.add_middleware(Budget, budget_s=REQUEST_BUDGET_S, prefixes=BUDGETED, on_timeout=late, abandon=abandon)
    return app


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
