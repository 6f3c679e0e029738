"""The gateway's alerts: ``GET /api/alerts`` (a page of them) and ``/sse/alerts`` (new ones as they fire).

Each alert is the JSON an alerts agent appended to its alerts stream (``streams.ALERTS``: one per
model the rules watch; schemas/alerts.py) with its entry ``id`` (``<event ms>-<n>``). Both routes
cover every alerts stream of the underlyings asked for (all of them by default), merged by event time.
``/sse/alerts`` says where each stream stands in every event's ``id:`` (``SPX:alerts@<timed id>,...``,
the tab feeds' syntax), so a reconnect with that Last-Event-ID resumes each exactly. A dashboard tab
carries the same streams as its feeds ``SPX:alerts``, ``SPX:alerts.intent``, ``SPX:alerts.best_flies``
(agents/gateway/feeds.py).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response

from marketswarm.agents.gateway.feeds import (
    ALERT_FEEDS,
    MAX_ALERT_RESUME,
    FeedSource,
    TabRequestError,
    cancel_all,
    feed_name,
    parse_tab,
    parse_version,
    timed_feed,
    timed_id,
)
from marketswarm.agents.gateway.sse import Segment, SseResponse, sse_event
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


def _json(entry_id: bytes, fields: dict[bytes, bytes]) -> dict[str, Any]:
    return {"id": entry_id.decode(), **alerts.plain_json(codec.decode(streams.Payload.ALERT, fields))}


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
    (null: this was the last); ``last`` the newest alert's id of each alerts stream by its tab feed
    (``{"SPX:alerts": "<ms>-<n>", ...}``, "0-0": none yet), where feeds that follow this list resume,
    so nothing falls between them."""
    gw = gateway_of(request)
    us = await _underlyings(request, underlying)
    if since is not None and ENTRY_ID.match(since):
        start = f"({since}"
    else:
        start = f"{when(since, 'since') if since is not None else session_start_ms(int(time.time() * 1000))}-0"
    rows: list[tuple[int, str, bytes, dict[bytes, bytes]]] = []
    last: dict[str, str] = {}
    for u in us:
        for spec in streams.ALERTS.values():
            key = spec.key(u)
            newest = await gw.redis.xrevrange(key, count=1)
            last[feed_name(u, spec.name)] = newest[0][0].decode() if newest else "0-0"
            for entry_id, fields in await gw.redis.xrange(key, min=start, count=limit + 1):
                rows.append((timed_id(entry_id), f"{u}:{spec.name}", entry_id, fields))
    rows.sort(key=lambda r: (r[0], r[1]))
    out = [_json(e, f) for _, _, e, f in rows[:limit]]
    following = out[-1]["id"] if len(rows) > limit and out else None
    return Response(orjson.dumps({"alerts": out, "next": following, "last": last}), media_type="application/json")


def _resume_points(header: str, feeds: list[tuple[str, str]]) -> dict[str, int]:
    """Where each feed resumes: a Last-Event-ID of ours (``SPX:alerts@<timed id>,...``) says it per
    feed, a number for all of them (an alert's timed id); anything else: new alerts only."""
    points = {feed_name(u, streams.ALERTS[m].name): -1 for u, m in feeds}
    if header.isdigit():
        return dict.fromkeys(points, parse_version(header))
    try:
        for u, name, after in parse_tab(header, set(ALERT_FEEDS)):
            if feed_name(u, name) in points:
                points[feed_name(u, name)] = after
    except TabRequestError:
        pass
    return points


async def _alert_events(
    src: FeedSource, feeds: list[tuple[str, str]], points: dict[str, int]
) -> AsyncIterator[Segment]:
    ready: asyncio.Queue[tuple[str, bytes, dict[bytes, bytes]] | Segment | None] = asyncio.Queue(64)

    async def pump(u: str, model: str) -> None:
        spec = streams.ALERTS[model]
        name = feed_name(u, spec.name)

        def render(entry_id: bytes, fields: dict[bytes, bytes]) -> tuple[str, bytes, dict[bytes, bytes]]:
            return name, entry_id, fields

        events = timed_feed(src, spec.key(u), name, points[name], render, limit=MAX_ALERT_RESUME, tagged=False)
        try:
            async for item in events:
                await ready.put(item)
        finally:
            await events.aclose()
        await ready.put(None)  # the connection ends with any of its feeds (cut off as too slow)

    pumps = [asyncio.create_task(pump(u, m)) for u, m in feeds]
    try:
        while (item := await ready.get()) is not None:
            if isinstance(item, Segment):
                yield item  # the store stalled or resumed
                continue
            name, entry_id, fields = item
            points[name] = timed_id(entry_id)
            where = ",".join(f"{n}@{v}" for n, v in sorted(points.items()) if v >= 0)
            yield Segment(sse_event("alert", where, orjson.dumps(_json(entry_id, fields))))
    finally:
        await cancel_all(pumps)


@router.get("/sse/alerts")
async def sse_alerts(request: Request, underlying: str | None = None) -> SseResponse:
    """New alerts as ``alert`` events (the JSON of ``/api/alerts``) from every alerts stream of the
    underlyings; ``id:`` where each stream stands (``SPX:alerts@<event ms * 1000 + n>,...``). With that
    ``Last-Event-ID`` each stream resumes exactly after it (a number: after that timed id on every
    stream), up to 500 alerts per stream, then new ones."""
    us = await _underlyings(request, underlying)
    if not us:
        raise HTTPException(404, "no underlying is published yet")
    feeds = [(u, m) for u in us for m in streams.ALERTS]
    points = _resume_points(request.headers.get("last-event-id", ""), feeds)
    src = gateway_of(request).feed_source()
    return admitted(request, lambda: _alert_events(src, feeds, points))
