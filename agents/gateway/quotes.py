"""The quotes a tile's legs have in the live state, for the gateway's tile lookups."""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis

from marketswarm.topology import streams

QUOTE_FIELDS = ("ts_ns", "bid", "ask")


async def read_quotes(redis: aioredis.Redis, u: str, epoch: str, symbols: list[str]) -> list[dict[str, object]]:
    """The quote each of ``symbols`` has in ``epoch``'s state (bid, ask and their time; absent sides
    are None, and so is everything of a contract without a quote)."""
    raws = await redis.hmget(streams.state_key(u, epoch), [f"{s}|q" for s in symbols]) if symbols else []
    out: list[dict[str, object]] = []
    for s, raw in zip(symbols, raws, strict=True):
        q = orjson.loads(raw[streams.STATE_VALUE_HEADER :]) if raw else {}
        out.append({"symbol": s, **{f: q.get(f) for f in QUOTE_FIELDS}})
    return out
