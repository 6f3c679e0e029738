"""The gateway's alerts: ``GET /api/alerts`` (a page of them) and ``/sse/alerts`` (new ones as they fire).

Each alert is the JSON the alerts agent appended to ``ms:{U}:alerts.v1`` (schemas/alerts.py) with its
entry ``id`` (``<event ms>-<n>``). Without ``underlying`` both cover every published underlying,
merged by event time. A dashboard tab carries an underlying's alerts on its one connection as the feed
``SPX:alerts@<timed id>`` (agents/gateway/feeds.py).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response

from marketswarm.agents.gateway.feeds import alerts_feed, cancel_all, parse_version, timed_id
from marketswarm.agents.gateway.sse import Segment, SseResponse
from marketswarm.agents.gateway.state import gateway_of
from marketswarm.agents.gateway.streaming import admitted
from marketswarm.agents.gateway.timeline import when
from marketswarm.schemas import alerts, codec
from marketswarm.schemas.history import session_start_ms
from marketswarm.topology import streams

MAX_ALERTS = 1000
ENTRY_ID = re.compile(r"^\d{1,15}-\d{1,6}$")
router = APIRouter()


async def _underlyings(request: Request, underlying: str | None) -> list[str]:
    gw = gateway_of(request)
    if underlying:
        return [await gw.underlying(u.strip()) for u in underlying.split(",") if u.strip()]
    return sorted(await gw.known.get())


@router.get("/api/alerts")
async def alert_list(
    request: Request,
    underlying: str | None = Query(None, description="one or more, comma-separated; default: all"),
    since: str | None = Query(
        None, description="ISO 8601 or epoch ms (from then on), or an alert id (after it); default: the day's start"
    ),
    limit: int = Query(200, ge=1, le=MAX_ALERTS),
) -> Response:
    """The alerts fired since a time, oldest first: each ``{id, fingerprint, rule, severity,
    underlying, t_ns, version, subject, message, values}``. ``next`` is the ``since`` of the next page
    (null: this was the last); ``last`` the newest alert's id by underlying ("0-0": none yet), where a
    feed that follows this list resumes (``SPX:alerts@<timed id>``), so nothing falls between them."""
    gw = gateway_of(request)
    us = await _underlyings(request, underlying)
    if since is not None and ENTRY_ID.match(since):
        start = f"({since}"
    else:
        start = f"{when(since, 'since') if since is not None else session_start_ms(int(time.time() * 1000))}-0"
    rows: list[tuple[int, str, bytes, dict[bytes, bytes]]] = []
    last: dict[str, str] = {}
    for u in us:
        newest = await gw.redis.xrevrange(streams.ALERTS.key(u), count=1)
        last[u] = newest[0][0].decode() if newest else "0-0"
        for entry_id, fields in await gw.redis.xrange(streams.ALERTS.key(u), min=start, count=limit + 1):
            rows.append((timed_id(entry_id), u, entry_id, fields))
    rows.sort(key=lambda r: (r[0], r[1]))
    page = rows[:limit]
    out = [{"id": e.decode(), **alerts.plain_json(codec.decode(streams.Payload.ALERT, f))} for _, _, e, f in page]
    more = len(rows) > limit
    return Response(
        orjson.dumps({"alerts": out, "next": out[-1]["id"] if more and out else None, "last": last}),
        media_type="application/json",
    )


async def _merged(feeds: list[AsyncGenerator[Segment, None]]) -> AsyncIterator[Segment]:
    ready: asyncio.Queue[Segment | None] = asyncio.Queue(64)

    async def pump(events: AsyncGenerator[Segment, None]) -> None:
        try:
            async for seg in events:
                await ready.put(seg)
        finally:
            await events.aclose()
        await ready.put(None)

    pumps = [asyncio.create_task(pump(f)) for f in feeds]
    try:
        while (seg := await ready.get()) is not None:
            yield seg
    finally:
        await cancel_all(pumps)


@router.get("/sse/alerts")
async def sse_alerts(request: Request, underlying: str | None = None) -> SseResponse:
    """New alerts as ``alert`` events (the JSON of ``/api/alerts``), ``id:`` ``<event ms> * 1000 + n``.
    With ``Last-Event-ID`` the alerts after it come first (up to 500 per underlying), then new ones."""
    us = await _underlyings(request, underlying)
    if not us:
        raise HTTPException(404, "no underlying is published yet")
    after = parse_version(request.headers.get("last-event-id", ""))
    src = gateway_of(request).feed_source()
    return admitted(request, lambda: _merged([alerts_feed(src, u, after) for u in us]))
