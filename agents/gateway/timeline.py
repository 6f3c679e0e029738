"""The gateway's history: models as they stood at a past time (``?at=``) and the day's level history.

* ``GET /api/models/{U}/{S}?at=T`` and ``GET /api/gex/{U}?at=T`` (rest.py) answer the version in force
  at T (topology/travel.py) in the bytes REST served for it live. The ``X-History`` header says how
  exact: ``version`` (that version exactly, while the diffs are retained), or ``minute <ISO>`` (the
  version in force at that minute boundary, from its keyframe).
* ``GET /api/columns/{U}/{S}?at=T``: the same model as the dashboard reads it, ``{"geometry",
  "snapshot"}``: the SSE events' JSON for a heatmap or GEX, so a past moment draws like a live one.
* ``GET /api/history/{U}/levels?from=&to=&limit=``: the level history as columns, paged.

A time is ISO 8601 (no offset: New York time) or epoch milliseconds; unparsable or in the future is a
400, before the retained history a 404, each with the reason. A request reads a bounded amount: a
binary search and at most a few hundred diffs for ``at``, at most ``MAX_LEVEL_ROWS`` points of at most
a day for the levels. Bodies are built in a worker thread and the last few are kept (a scrubber asks
for the same minutes again).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response

from marketswarm.agents.gateway.sse import LargeJson
from marketswarm.agents.gateway.state import gateway_of
from marketswarm.schemas.documents import geometry_json, iso
from marketswarm.schemas.history import LEVEL_FIELDS, TimeError, parse_time, session_start_ms
from marketswarm.topology import streams
from marketswarm.topology.travel import At, HistoryError, levels_between, levels_span, model_at

FUTURE_SLACK_MS = 5_000  # a time this far past the gateway's clock is still "now" (clocks differ)
DAY_MS = 86_400_000
MAX_LEVEL_ROWS = 5000
BODIES_KEPT = 8  # past models' bodies kept (a heatmap's is up to 3 MB)

router = APIRouter()
# (underlying, model, version, its header, form) -> body; the loop is the only writer (no await between
# a lookup and its use), so no lock.
_bodies: OrderedDict[tuple[str, str, int, bytes, str], bytes] = OrderedDict()


def when(text: str, name: str) -> int:
    """A request's time (epoch ms); a 400 with what is accepted, or when it is in the future."""
    try:
        t = parse_time(text)
    except TimeError as exc:
        raise HTTPException(400, f"{name}: {exc}") from None
    if t > time.time() * 1000 + FUTURE_SLACK_MS:
        raise HTTPException(400, f"{name}: {iso(t * 1_000_000)} is in the future")
    return t


async def past(request: Request, u: str, strategy: str, at: str, form: str = "rest") -> Response:
    """The model at ``at``: its REST JSON (``form="rest"``) or its columns (``"columns"``)."""
    t = when(at, "at")
    gw = gateway_of(request)
    try:
        found = await model_at(gw.redis, u, strategy, t)
    except HistoryError as exc:
        raise HTTPException(404, f"{exc} (asked for {iso(t * 1_000_000)})") from None
    body = await _body(u, strategy, found, form)
    headers = {"X-History": "version" if found.exact else f"minute {iso((found.boundary_ms or 0) * 1_000_000)}"}
    return LargeJson(body, headers=headers)


async def _body(u: str, strategy: str, found: At, form: str) -> bytes:
    p = found.published
    key = (u, strategy, p.version, p.header or b"", form)
    cached = _bodies.get(key)
    if cached is not None:
        _bodies.move_to_end(key)
        return cached

    def build() -> bytes:
        if form == "rest":
            return p.body() or b""
        geometry = geometry_json(p.geometry) if p.geometry is not None else b"null"
        return b'{"geometry":' + geometry + b',"snapshot":' + (p.snapshot() or b"null") + b"}"

    body = await asyncio.to_thread(build)
    _bodies[key] = body
    while len(_bodies) > BODIES_KEPT:
        _bodies.popitem(last=False)
    return body


@router.get("/api/columns/{underlying}/{strategy}")
async def columns(
    request: Request, underlying: str, strategy: str, at: str = Query(description="ISO 8601 or epoch ms")
) -> Response:
    """A heatmap or GEX as it stood at ``at``, as the dashboard reads it: ``{"geometry": ...,
    "snapshot": ...}``, the JSON of the SSE ``geometry`` and ``snapshot`` events."""
    if strategy not in streams.STRATEGIES:
        raise HTTPException(404, f"unknown strategy {strategy!r}; one of {list(streams.STRATEGIES)}")
    return await past(request, await gateway_of(request).underlying(underlying), strategy, at, "columns")


@router.get("/api/history/{underlying}/levels")
async def levels(
    request: Request,
    underlying: str,
    start: str | None = Query(None, alias="from", description="ISO 8601 or epoch ms; default: the day's start"),
    end: str | None = Query(None, alias="to", description="ISO 8601 or epoch ms; default: the newest point"),
    limit: int = Query(MAX_LEVEL_ROWS, ge=1, le=MAX_LEVEL_ROWS, description="rows per page"),
) -> Response:
    """The level history of an underlying in event time, as columns: ``t`` (epoch ms) and one array
    per field (spot, flip, walls, total GEX, market mode and score, gravity level, band and expected
    move, intent bias, pin and quadrant, net premium for the day and the last 5 minutes), a row at
    each point of any series with every field as it stood then. At most a day per request and
    ``limit`` rows per page: ``next`` is the ``from`` of the next page (null: this is the last)."""
    gw = gateway_of(request)
    u = await gw.underlying(underlying)
    span = await levels_span(gw.redis, u)
    to_ms = when(end, "to") if end is not None else (span[1] if span else int(time.time() * 1000))
    from_ms = when(start, "from") if start is not None else session_start_ms(to_ms)
    if from_ms > to_ms:
        raise HTTPException(400, "from is after to")
    if to_ms - from_ms > DAY_MS:
        raise HTTPException(400, "at most a day per request: page through longer ranges")
    cols, following = await levels_between(gw.redis, u, from_ms, to_ms, limit)
    body = {
        "underlying": u,
        "from": from_ms,
        "to": to_ms,
        "retained": None if span is None else {"first": span[0], "last": span[1]},
        "fields": ["t", *LEVEL_FIELDS],
        "columns": cols,
        "next": following,
    }
    return Response(orjson.dumps(body), media_type="application/json")
