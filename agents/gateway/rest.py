"""The gateway's REST routes: published models (the heatmaps, GEX and the derived models), the current
epoch's geometry, and the quotes of a tile's legs.

A heatmap's per-tile JSON is built from the columns in a worker thread and cached (feeds.ModelCache);
an unknown underlying or model is a 404 before any Redis work.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response

from marketswarm.agents.gateway.quotes import read_quotes
from marketswarm.agents.gateway.sse import LargeJson
from marketswarm.agents.gateway.state import gateway_of
from marketswarm.agents.gateway.timeline import past
from marketswarm.schemas.models import GexModel, ModelOut
from marketswarm.topology import streams

HEATMAPS = {s.value for s in streams.HEATMAP_STRATEGIES}
DOCUMENTS = {*HEATMAPS, *streams.DERIVED}  # served at /api/models/{underlying}/{name}
MAX_QUOTES = 8  # contracts per /api/quotes request (a tile has at most 3 legs)
MAX_EPOCH_CHARS = 32
AT = Query(None, description="a past time (ISO 8601, no offset: New York; or epoch ms): the version in force then")

router = APIRouter()


@router.get("/api/underlyings")
async def underlyings(request: Request) -> list[str]:
    members = await gateway_of(request).redis.smembers(streams.underlyings_key())
    return sorted(m.decode() for m in members)


@router.get("/api/models/{underlying}/{strategy}", response_model=ModelOut)
async def model(request: Request, underlying: str, strategy: str, at: str | None = AT) -> Response:
    """A heatmap (``single``, ``vertical``, ``butterfly``) or a derived model (``market_mode``,
    ``gravity``, ``intent``, ``best_flies``); with ``at``, as it stood then (agents/gateway/timeline.py;
    the ``X-History`` header says how exact)."""
    if strategy not in DOCUMENTS:
        raise HTTPException(404, f"unknown model {strategy!r}; one of {sorted(DOCUMENTS)}")
    gw = gateway_of(request)
    if at is not None:
        return await past(request, await gw.underlying(underlying), strategy, at)
    body = await gw.models.body(gw.redis, await gw.underlying(underlying), strategy)
    if body is None:
        raise HTTPException(404, f"no published {strategy} model for {underlying} yet")
    return LargeJson(body)


@router.get("/api/gex/{underlying}", response_model=GexModel)
async def gex(request: Request, underlying: str, at: str | None = AT) -> Response:
    """The GEX model; with ``at``, as it stood then."""
    gw = gateway_of(request)
    if at is not None:
        return await past(request, await gw.underlying(underlying), streams.Strategy.GEX, at)
    body = await gw.models.body(gw.redis, await gw.underlying(underlying), streams.Strategy.GEX)
    if body is None:
        raise HTTPException(404, f"no published GEX for {underlying} yet")
    return LargeJson(body)


@router.get("/api/quotes/{underlying}")
async def quotes(request: Request, underlying: str, epoch: str, symbols: str) -> Response:
    """Bid, ask and event time of up to MAX_QUOTES contracts in an epoch's state: the hover's legs."""
    gw = gateway_of(request)
    u = await gw.underlying(underlying)
    wanted = [x.strip().upper() for x in symbols.split(",") if x.strip()]
    if not wanted or len(wanted) > MAX_QUOTES or not all(x.isascii() and x.isalnum() for x in wanted):
        raise HTTPException(422, f"symbols: 1 to {MAX_QUOTES} comma-separated OCC symbols")
    if not (epoch.isascii() and epoch.isalnum() and len(epoch) <= MAX_EPOCH_CHARS):
        raise HTTPException(422, "epoch: the epoch id of the geometry the legs come from")
    found = await read_quotes(gw.redis, u, epoch, wanted)
    return Response(orjson.dumps({"underlying": u, "epoch": epoch, "quotes": found}), media_type="application/json")


@router.get("/api/geometry/{underlying}/{strategy}")
async def geometry(request: Request, underlying: str, strategy: str) -> Response:
    """The labels of the current epoch's positions: series, contracts, and per position its series,
    strike, width and legs (heatmaps) or strike (``gex``). SSE sends the same as ``geometry``."""
    if strategy not in streams.STRATEGIES:
        raise HTTPException(404, f"unknown strategy {strategy!r}; one of {list(streams.STRATEGIES)}")
    gw = gateway_of(request)
    body = await gw.models.geometry(gw.redis, await gw.underlying(underlying), strategy)
    if body is None:
        raise HTTPException(404, f"no published {strategy} model for {underlying} yet")
    return LargeJson(body)
