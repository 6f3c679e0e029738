"""What the system looks like from Redis: servers, streams, groups, epochs, models. Read-only.

The inspector (`marketswarm inspect`), `marketswarm top` and the gateway's /metrics all read through
here, so every view names the same things the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from marketswarm.topology import streams
from marketswarm.topology.connections import text
from marketswarm.topology.reading import load_published, read_model
from marketswarm.topology.settings import mask_url


async def server_info(redis: aioredis.Redis, url: str) -> dict[str, Any]:
    """Which server this is: URL (password masked), name and version, role (for a cluster: how many
    masters and replicas)."""
    cluster = isinstance(redis, RedisCluster)
    target = {"target_nodes": RedisCluster.DEFAULT_NODE} if cluster else {}
    info = await redis.info("server", **target)
    repl = await redis.info("replication", **target)
    name = "valkey" if "valkey_version" in info else "redis"
    masked = mask_url(url)
    role = repl.get("role")
    if cluster:
        role = f"cluster of {len(redis.get_primaries())} masters, {len(redis.get_replicas())} replicas"
    return {
        "url": masked,
        "server": name,
        "version": info.get("valkey_version") or info.get("redis_version"),
        "role": role,
        "uptime_s": info.get("uptime_in_seconds"),
    }


def placement(redis: aioredis.Redis, underlyings: Sequence[str]) -> list[dict[str, Any]]:
    """Which node holds each underlying (all its keys share one slot): the master that owns its slot
    on a cluster, the one server otherwise."""
    rows = []
    for u in underlyings:
        key = streams.RAW.key(u)
        if isinstance(redis, RedisCluster):
            node = redis.get_node_from_key(key)
            rows.append({"underlying": u, "slot": redis.keyslot(key), "node": node.name if node else None})
        else:
            kw = redis.connection_pool.connection_kwargs
            rows.append(
                {"underlying": u, "slot": None, "node": f"{kw.get('host', kw.get('path'))}:{kw.get('port', '')}"}
            )
    return rows


async def epochs(redis: aioredis.Redis, u: str) -> list[dict[str, Any]]:
    pointer = await redis.get(streams.epoch_pointer_key(u))
    active = text(pointer) if pointer is not None else None
    out = []
    for epoch, score in await redis.zrange(streams.epochs_index_key(u), 0, -1, withscores=True):
        e = text(epoch)
        meta = {text(k): text(v) for k, v in (await redis.hgetall(streams.epoch_meta_key(u, e))).items()}
        ttl = await redis.ttl(streams.state_key(u, e))
        out.append(
            {
                "epoch": e,
                "active": e == active,
                "status": meta.get("status", "expired"),
                "created_ns": int(score),
                "contracts": int(meta.get("contracts", 0) or 0),
                "geometry": orjson.loads(meta["geometry"]) if "geometry" in meta else None,
                "ttl_s": ttl if ttl and ttl > 0 else None,
            }
        )
    return out


def age_s(now_ms: int, asof_ns: int) -> float:
    """Seconds since ``asof_ns``, to 0.1 s. An event time ahead of this clock (input from a clock that
    runs ahead, or a replay dated later than now) is 0 old, never negative."""
    return round(max(now_ms - asof_ns / 1e6, 0.0) / 1000, 1)


async def model_rows(redis: aioredis.Redis, u: str) -> list[dict[str, Any]]:
    """Per strategy: staged vs published tiles, coverage, last version and its age."""
    rows = []
    now_ms = int(time.time() * 1000)
    for s in streams.STRATEGIES:
        staging_raw, state_raw = await redis.hmget(
            streams.publish_state_key(u, s), [streams.STAGING_FIELD, streams.STATE_FIELD]
        )
        meta = orjson.loads(staging_raw) if staging_raw else {}
        state = orjson.loads(state_raw) if state_raw else {}
        published = await load_published(redis, u, s)
        header = published.meta
        published_n = published.present
        last = await redis.xrevrange(streams.DIFFS[s].key(u), count=1)
        rows.append(
            {
                "strategy": s,
                "staged_tiles": meta.get("staged_tiles"),
                "published_tiles": published_n,
                "pending_slots": meta.get("pending"),
                "changed_since_version": meta.get("changed_since_version"),
                "epoch": header.get("epoch"),
                "version": header.get("version"),
                "asof": header.get("asof"),
                "version_age_s": age_s(now_ms, int(header["asof_ns"])) if header.get("asof_ns") else None,
                "last_diff_id": text(last[0][0]) if last else None,
                "checkpoint_version": state.get("checkpoint_version"),
            }
        )
    return rows


async def examples(redis: aioredis.Redis, u: str) -> dict[str, str] | None:
    """A contract and a butterfly tile to drill into: at the money in the nearest expiry of the
    published butterfly model (None before its first version)."""
    body = await read_model(redis, u, streams.Strategy.BUTTERFLY)
    model = orjson.loads(body) if body is not None else {}
    tiles, spot = model.get("tiles") or [], model.get("spot")
    if not tiles or spot is None:
        return None
    nearest = min(t["expiry"] for t in tiles)
    best = min((t for t in tiles if t["expiry"] == nearest), key=lambda t: (abs(t["strike"] - spot), t["width"]))
    return {"contract": best["legs"][len(best["legs"]) // 2], "tile": best["k"]}
