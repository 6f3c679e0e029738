"""Backpressure at the edge: sources shed new input while the agents are too far behind.

Inside the topology nothing is ever dropped: retention never trims an entry a group has not
acknowledged (topology/retention.py). So when input arrives faster than the agents can take it, the
place to give way is where it enters. A ``Gate`` reads how many entries the agents of an underlying
have not yet read or acknowledged (XINFO GROUPS lag + pending, over every group; at most every
``CHECK_INTERVAL_S``), and while that backlog is above ``max_backlog`` the source drops new market
frames and counts them (``marketswarm_shed_frames_total``, ``marketswarm_shed_events_total``). Chain
snapshots are never shed: they declare which contracts exist, and a quote dropped now is superseded
by the next one for its contract.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis.asyncio as aioredis

from marketswarm.topology.agent import AgentSpec
from marketswarm.topology.observe import backlog

CHECK_INTERVAL_S = 0.25  # how stale the backlog a source acts on may be


class Gate:
    """Admits a source's frames while the agents of their underlying keep up."""

    def __init__(self, redis: aioredis.Redis, max_backlog: int, specs: Sequence[AgentSpec]) -> None:
        self.redis = redis
        self.max_backlog = max_backlog
        self.specs = tuple(specs)  # the agents whose groups hold the backlog
        self._checked: dict[str, tuple[float, bool]] = {}

    async def open(self, u: str) -> bool:
        """True while the backlog of ``u`` is within bounds (0 disables the gate)."""
        if self.max_backlog <= 0:
            return True
        now = time.monotonic()
        checked = self._checked.get(u)
        if checked is not None and now - checked[0] < CHECK_INTERVAL_S:
            return checked[1]
        ok = await backlog(self.redis, [u], self.specs) <= self.max_backlog
        self._checked[u] = (now, ok)
        return ok
