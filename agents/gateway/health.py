"""The gateway's health routes: ``/healthz`` (the process answers), ``/readyz`` (Redis answers and every
group exists) and ``/metrics`` (Prometheus, with the groups' lag and the models' age read at scrape time).

Their Redis reads use their own small budget and are computed at most once per ``HEALTH_CACHE_S``
whoever asks (``Recent``), so a scraper or a probe storm costs Redis one read.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.exceptions import RedisError

from marketswarm.agents.gateway.state import gateway_of
from marketswarm.topology import observe, streams
from marketswarm.topology.agent import AgentSpec
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.settings import Settings

log = logging.getLogger(__name__)

HEALTH_CACHE_S = 1.0  # /readyz and /metrics' Redis reads are shared by every request in this window

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"ok": True}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    body, status = await gateway_of(request).ready.get()
    return JSONResponse(body, status_code=status)


@router.get("/metrics")
async def prometheus(request: Request) -> Response:
    gw = gateway_of(request)
    await gw.scrape.get()
    gw.metrics.sse_clients.labels("all").set(gw.admission.open)
    registry: CollectorRegistry = gw.metrics.registry
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def readiness(
    redis: aioredis.Redis, settings: Settings, agents: Sequence[AgentSpec]
) -> tuple[dict[str, Any], int]:
    """(body, status) of ``/readyz``: the body names no host or port (the log does)."""
    try:
        await redis.ping()
        missing = await observe.missing_groups(redis, settings.underlyings, agents)
    except (RedisError, OSError) as exc:
        log.warning("readiness: Redis: %s", exc)
        return {"ready": False, "redis": "unavailable"}, 503
    return {"ready": not missing, "missing_groups": missing}, 200 if not missing else 503


async def scrape(redis: aioredis.Redis, metrics: Metrics, settings: Settings, agents: Sequence[AgentSpec]) -> None:
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


async def published_underlyings(redis: aioredis.Redis, settings: Settings) -> frozenset[str]:
    """The underlyings a request may name: the configured ones and every one published."""
    return frozenset(m.decode() for m in await redis.smembers(streams.underlyings_key())) | set(settings.underlyings)
