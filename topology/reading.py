"""Reading a published model from Redis: its checkpoint, then the diffs after it.

The gateway, export, replay and the inspector read models here (a derived agent's side reads go
through the runtime instead: agents/derive/publishing.py). The model itself, as columns, and applying
diffs to it are topology/published.py (pure, shared with the publisher's restore).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from marketswarm.schemas import codec
from marketswarm.topology import streams
from marketswarm.topology.connections import text
from marketswarm.topology.published import Published, apply_diffs, checkpoint_read, diff_version, from_checkpoint

DIFFS_PER_READ = 500  # diffs read per XRANGE when catching up


async def catch_up(redis: aioredis.Redis, u: str, published: Published, *, strict: bool = False) -> Published:
    """Apply the diffs after ``published.version``, in place (see ``apply_diffs``)."""
    key = streams.DIFFS[published.strategy].key(u)
    while True:
        entries = await redis.xrange(key, min=f"({published.version}-0", count=DIFFS_PER_READ)
        diffs = [(text(i), codec.decode(streams.Payload.DIFF, f)) for i, f in entries]
        apply_diffs(published, key, diffs, strict=strict)
        if len(entries) < DIFFS_PER_READ:
            return published


async def load_published(redis: aioredis.Redis, u: str, strategy: str) -> Published:
    """The current canonical model: checkpoint + diffs since (an empty Published if none yet)."""
    command = checkpoint_read(u, strategy)
    reply = await redis.hmget(command[1], list(command[2:]))
    return await catch_up(redis, u, from_checkpoint(strategy, reply))


async def read_model(redis: aioredis.Redis, u: str, strategy: str) -> bytes | None:
    """The canonical model's JSON, as REST serves it and export writes it."""
    return (await load_published(redis, u, strategy)).body()


async def top_version(redis: aioredis.Redis, u: str, strategy: str) -> int | None:
    """The newest published version (cheap: one entry), None before the first."""
    last = await redis.xrevrange(streams.DIFFS[strategy].key(u), count=1)
    return diff_version(last[0][0]) if last else None
