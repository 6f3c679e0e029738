"""Reading the current model of a running system: the checkpoint plus the diffs after it, from Redis.

The gateway, export, replay and the inspector read models here; the model itself, as columns, and
applying diffs to it are agents/publish/published.py (pure, shared with the publisher's restore).
"""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis

from marketswarm.agents.publish.published import Published, apply_diffs, checkpoint_read, diff_version, from_checkpoint
from marketswarm.schemas import codec
from marketswarm.topology import streams
from marketswarm.topology.connections import text

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


STATE_VALUE_HEADER = 32  # a state hash value: a fixed-size ordering header, then the JSON (agents/hydrate.lua)
QUOTE_FIELDS = ("ts_ns", "bid", "ask")


async def read_quotes(redis: aioredis.Redis, u: str, epoch: str, symbols: list[str]) -> list[dict[str, object]]:
    """The quote each of ``symbols`` has in ``epoch``'s state (bid, ask and their time; absent sides
    are None, and so is everything of a contract without a quote)."""
    raws = await redis.hmget(streams.state_key(u, epoch), [f"{s}|q" for s in symbols]) if symbols else []
    out: list[dict[str, object]] = []
    for s, raw in zip(symbols, raws, strict=True):
        q = orjson.loads(raw[STATE_VALUE_HEADER:]) if raw else {}
        out.append({"symbol": s, **{f: q.get(f) for f in QUOTE_FIELDS}})
    return out
