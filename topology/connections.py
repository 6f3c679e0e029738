"""Redis connections, the same for every agent and source, and reading what a group acknowledged."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis


def create_redis(url: str, block_ms: int = 0, **kwargs: Any) -> aioredis.Redis:
    """A client whose socket timeout always exceeds the longest BLOCK it will issue."""
    # Generous: a CPU-bound step can hold the event loop for seconds, and a reply that arrived in
    # the meantime must not count as a timeout.
    timeout_s = block_ms / 1000 + 30.0
    return aioredis.Redis.from_url(
        url,
        decode_responses=False,
        socket_timeout=timeout_s,
        socket_connect_timeout=5.0,
        health_check_interval=30,
        **kwargs,
    )


async def acked_since(
    redis: aioredis.Redis, key: str, group: str, after_id: str
) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Entries of ``key`` after ``after_id`` that ``group`` has read and acknowledged, in order.

    Stateful agents checkpoint now and then, and on restore re-apply what they acknowledged since
    their checkpoint (entries still pending will be delivered again and are left out)."""
    groups = await redis.xinfo_groups(key)
    row = next((g for g in groups if g["name"] in (group, group.encode())), None)
    if row is None:
        return []
    pending = {r["message_id"] for r in await redis.xpending_range(key, group, "-", "+", 1_000_000)}
    entries = await redis.xrange(key, min="(" + after_id, max=row["last-delivered-id"])
    return [(i, f) for i, f in entries if i not in pending]
