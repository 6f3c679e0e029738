"""The gateway's SSE routes: one model's feed (``/sse/heatmap/{S}``, ``/sse/gex``, ``/sse/models/{name}``),
one level series (``/sse/history/{U}/levels/{model}``) and a dashboard tab's feeds on one connection
(``/sse/tab``).

Each connection is admitted before its response starts (in all, then per client address) and released
when it ends; the events themselves come from agents/gateway/feeds.py's generators.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, HTTPException, Request

from marketswarm.agents.gateway.feeds import (
    ALERT_FEEDS,
    LEVEL_FEEDS,
    TabRequestError,
    levels_feed,
    model_feed,
    parse_tab,
    parse_version,
    tab,
)
from marketswarm.agents.gateway.rest import HEATMAPS
from marketswarm.agents.gateway.sse import Segment, SseResponse, accepts_gzip
from marketswarm.agents.gateway.state import gateway_of
from marketswarm.topology import streams

RETRY_AFTER_S = "5"  # a refused SSE client's wait before it tries again

router = APIRouter()


def admitted(request: Request, segments: Callable[[], AsyncIterator[Segment]]) -> SseResponse:
    """Admit the connection (counted before its response starts, released when it ends) and stream it;
    a 503 over the total, a 429 over the address's share."""
    gw = gateway_of(request)
    address = request.client.host if request.client else "unknown"
    refused = gw.admission.admit(address)
    if refused is not None:
        over_total = gw.admission.open >= gw.admission.total
        gw.metrics.sse_refused.labels("total" if over_total else "address").inc()
        raise HTTPException(503 if over_total else 429, refused, {"Retry-After": RETRY_AFTER_S})
    return SseResponse(segments(), accepts_gzip(request), on_close=lambda: gw.admission.release(address))


def one_feed(request: Request, u: str, strategy: str) -> SseResponse:
    version = parse_version(request.headers.get("last-event-id", ""))
    return admitted(request, lambda: model_feed(gateway_of(request).feed_source(), u, strategy, version))


@router.get("/sse/heatmap/{strategy}")
async def sse_heatmap(request: Request, strategy: str, underlying: str = "SPX") -> SseResponse:
    if strategy not in HEATMAPS:
        raise HTTPException(404, f"unknown strategy {strategy!r}")
    return one_feed(request, await gateway_of(request).underlying(underlying), strategy)


@router.get("/sse/models/{name}")
async def sse_model(request: Request, name: str, underlying: str = "SPX") -> SseResponse:
    """Any published model by name (the heatmaps, ``gex`` and the derived models): snapshot, then diffs."""
    if name not in streams.MODELS:
        raise HTTPException(404, f"unknown model {name!r}; one of {list(streams.MODELS)}")
    return one_feed(request, await gateway_of(request).underlying(underlying), name)


@router.get("/sse/gex")
async def sse_gex(request: Request, underlying: str = "SPX") -> SseResponse:
    return one_feed(request, await gateway_of(request).underlying(underlying), streams.Strategy.GEX)


@router.get("/sse/tab")
async def sse_tab(request: Request, feeds: str) -> SseResponse:
    """Every feed a dashboard tab shows, on one connection (a browser allows six per host).
    ``feeds=SPX:butterfly@1234,SPX:market_mode,NDX:gex`` names each feed, with the version to resume
    after (none: from a snapshot); ``SPX:levels.gex@<ms>`` is a level series (``levels.gex``,
    ``levels.market_mode``, ``levels.gravity``, ``levels.intent``) resuming after a time, and
    ``SPX:alerts@<id>`` (``alerts.intent``, ``alerts.best_flies``) the underlying's alerts after an
    alert's timed id (agents/gateway/vigil.py). Events are
    the per-feed endpoints' events, without ``id:``, each with a first ``data:`` line naming its feed;
    to resume, reconnect with every feed's last version or time (agents/gateway/feeds.py)."""
    gw = gateway_of(request)
    try:
        wanted = parse_tab(feeds, {*streams.MODELS, *LEVEL_FEEDS, *ALERT_FEEDS})
    except TabRequestError as exc:
        raise HTTPException(422, str(exc)) from exc
    checked = [(await gw.underlying(u), m, v) for u, m, v in wanted]
    return admitted(request, lambda: tab(gw.feed_source(), checked))


@router.get("/sse/history/{underlying}/levels/{model}")
async def sse_levels(request: Request, underlying: str, model: str) -> SseResponse:
    """New points of one level series (``gex``, ``market_mode``, ``gravity``, ``intent``): ``level``
    events, ``{"model", "t", <fields>}``, ``id:`` the point's time (epoch ms). With ``Last-Event-ID``
    the points after that time come first (up to 2000; ``/api/history/{U}/levels`` pages the rest)."""
    if model not in streams.LEVELS:
        raise HTTPException(404, f"no level series {model!r}; one of {list(streams.LEVELS)}")
    u = await gateway_of(request).underlying(underlying)
    after = parse_version(request.headers.get("last-event-id", ""))
    return admitted(request, lambda: levels_feed(gateway_of(request).feed_source(), u, model, after))
