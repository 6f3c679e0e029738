"""What every route of the gateway shares: its settings, its Redis budgets, the model cache, the limits.

``create_app`` (agents/gateway/app.py) builds one ``Gateway`` in its lifespan and keeps it on the
application; a route reaches it with ``gateway_of(request)``. Nothing here starts work of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from fastapi import HTTPException, Request

from marketswarm.agents.gateway.feeds import FeedSource, ModelCache
from marketswarm.agents.gateway.hub import Hub
from marketswarm.agents.gateway.limits import Admission, Attempts
from marketswarm.topology.agent import AgentSpec
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.settings import Settings

MAX_UNDERLYING_CHARS = 12


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


@dataclass
class Gateway:
    """One gateway process's shared state (its Redis clients are owned by the app's lifespan)."""

    settings: Settings
    metrics: Metrics
    agents: Sequence[AgentSpec]  # the topology, for readiness and the group gauges
    token: str | None  # the bearer token; None: no authentication
    redis: aioredis.Redis  # REST and SSE snapshot/resume reads
    health: aioredis.Redis  # readiness, metrics, the known underlyings
    hub: Hub  # one blocking reader per diffs stream, shared by every SSE client
    models: ModelCache
    admission: Admission  # SSE connections, in all and per address
    sign_ins: Attempts
    ready: Recent
    scrape: Recent
    known: Recent  # the published underlyings

    async def underlying(self, u: str) -> str:
        """``u`` if it is configured or published; a 404 otherwise, before any Redis work of the
        request (the published set is shared, re-read at most every few seconds)."""
        u = u.upper()
        if u in self.settings.underlyings:
            return u
        if not u.isascii() or not u.isalnum() or len(u) > MAX_UNDERLYING_CHARS or u not in await self.known.get():
            raise HTTPException(404, f"unknown underlying {u[:20]!r}")
        return u

    def feed_source(self) -> FeedSource:
        return FeedSource(self.redis, self.hub, self.models, self.settings.sse_max_resume_diffs)


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]
