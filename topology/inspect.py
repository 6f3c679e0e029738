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
from redis.exceptions import ResponseError

from marketswarm.agents.publish.models import load_published
from marketswarm.topology import graph, streams
from marketswarm.topology.agent import AgentSpec
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.settings import mask_url


def _s(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


def id_ms(entry_id: Any) -> int | None:
    try:
        return int(_s(entry_id).split("-")[0])
    except (ValueError, AttributeError, TypeError):
        return None


# Entries counted, at most, for a group whose lag the server does not know (a bound, not a scan).
LAG_COUNT_MAX = 100_000


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


async def known_underlyings(redis: aioredis.Redis, configured: Sequence[str] = ()) -> list[str]:
    members = {_s(m) for m in await redis.smembers(streams.underlyings_key())}
    return sorted(members | set(configured))


def stream_specs() -> list[streams.StreamSpec]:
    specs = [streams.RAW, streams.EVENTS, streams.REJECTS, streams.CHANGES]
    specs += [streams.STAGED[s] for s in streams.STRATEGIES]
    specs += [streams.DIFFS[s] for s in streams.STRATEGIES]
    return specs


async def stream_rows(redis: aioredis.Redis, underlyings: Sequence[str]) -> list[dict[str, Any]]:
    """Every stream (and its dead letters): length, first and last entry times, groups."""
    rows = []
    keys = [(u, spec, spec.key(u)) for u in underlyings for spec in stream_specs()]
    keys += [(u, spec, streams.dlq_key(spec.key(u))) for u in underlyings for spec in stream_specs()]
    async with redis.pipeline(transaction=False) as pipe:
        for _, _, key in keys:
            pipe.xlen(key)
            pipe.xrange(key, count=1)
            pipe.xrevrange(key, count=1)
        results = await pipe.execute()
    for i, (u, spec, key) in enumerate(keys):
        length, first, last = results[3 * i : 3 * i + 3]
        if not length and key.endswith(".dlq"):
            continue
        rows.append(
            {
                "underlying": u,
                "stream": key,
                "kind": spec.name + (".dlq" if key.endswith(".dlq") else ""),
                "length": int(length),
                "first_id": _s(first[0][0]) if first else None,
                "last_id": _s(last[0][0]) if last else None,
                "last_ms": id_ms(last[0][0]) if last else None,
                "retention": f"{spec.max_bytes // streams.MiB} MiB"
                + (f", {spec.max_age_s // 60} min" if spec.max_age_s else ""),
            }
        )
    return rows


async def group_rows(
    redis: aioredis.Redis, underlyings: Sequence[str], specs: Sequence[AgentSpec] | None = None
) -> list[dict[str, Any]]:
    """Every agent's group on every underlying: consumers, lag, pending, oldest pending idle.
    Two round trips whatever the number of groups: XINFO GROUPS, then XPENDING where needed."""
    pairs = [(spec.name, u, spec.reads.key(u)) for spec in (specs or graph.agents()) for u in underlyings]
    async with redis.pipeline(transaction=False) as pipe:
        for _, _, key in pairs:
            pipe.xinfo_groups(key)
        infos = await pipe.execute(raise_on_error=False)
    found: list[tuple[str, str, str, dict[Any, Any] | None]] = []
    for (name, u, key), info in zip(pairs, infos, strict=True):
        if isinstance(info, BaseException) and not isinstance(info, ResponseError):
            raise info  # the server, not the key: a connection lost, a failover in progress
        groups = [] if isinstance(info, ResponseError) else info
        found.append((name, u, key, next((g for g in groups if _s(g["name"]) == name), None)))
    waiting = [(name, key) for name, _, key, g in found if g is not None and int(g["pending"])]
    # A group's lag is unknown (nil) when the server cannot derive it from its read counter: after a
    # failover, an XDEL or a trim inside the unread part. Counted then from the entries themselves.
    unknown = [(name, key, g) for name, _, key, g in found if g is not None and g.get("lag") is None]
    oldest: dict[tuple[str, str], int] = {}
    counted: dict[tuple[str, str], int] = {}
    if waiting or unknown:
        async with redis.pipeline(transaction=False) as pipe:
            for name, key in waiting:
                pipe.xpending_range(key, name, min="-", max="+", count=1)
            for _, key, row in unknown:
                pipe.xrange(key, min="(" + _s(row["last-delivered-id"]), count=LAG_COUNT_MAX)
            results = await pipe.execute()
        for (name, key), pend in zip(waiting, results, strict=False):
            if pend:
                oldest[(name, key)] = int(pend[0]["time_since_delivered"])
        for (name, key, _), entries in zip(unknown, results[len(waiting) :], strict=True):
            counted[(name, key)] = len(entries)
    rows = []
    for name, u, key, g in found:
        if g is None:
            rows.append({"agent": name, "underlying": u, "stream": key, "exists": False})
            continue
        rows.append(
            {
                "agent": name,
                "underlying": u,
                "stream": key,
                "exists": True,
                "consumers": int(g["consumers"]),
                "lag": int(g["lag"]) if g.get("lag") is not None else counted[(name, key)],
                "pending": int(g["pending"]),
                "entries_read": None if g.get("entries-read") is None else int(g["entries-read"]),
                "last_delivered": _s(g["last-delivered-id"]),
                "oldest_pending_idle_ms": oldest.get((name, key)),
            }
        )
    return rows


async def refresh_group_metrics(
    redis: aioredis.Redis, metrics: Metrics, underlyings: Sequence[str], publish_interval_s: float | None = None
) -> None:
    """Set the lag/pending/length gauges from XINFO, and model ages (scrape time)."""
    us = await known_underlyings(redis, underlyings)
    now_ns = time.time_ns()
    for u in us:
        for s in streams.STRATEGIES:
            raw = await redis.hget(streams.publish_state_key(u, s), "state")
            if raw is None:
                continue
            asof = orjson.loads(raw).get("asof_ns")
            if asof:
                metrics.model_age.labels(u, s).set(max(0.0, (now_ns - asof) / 1e9))
            if publish_interval_s is not None:
                metrics.publish_interval.labels(u, s).set(publish_interval_s)
    for row in await group_rows(redis, us):
        if row["exists"]:
            if row["lag"] is not None:
                metrics.group_lag.labels(row["agent"], row["stream"]).set(row["lag"])
            metrics.group_pending.labels(row["agent"], row["stream"]).set(row["pending"])
    for row in await stream_rows(redis, us):
        metrics.stream_length.labels(row["stream"]).set(row["length"])


async def epochs(redis: aioredis.Redis, u: str) -> list[dict[str, Any]]:
    active = _s(await redis.get(streams.epoch_pointer_key(u)))
    out = []
    for epoch, score in await redis.zrange(streams.epochs_index_key(u), 0, -1, withscores=True):
        e = _s(epoch)
        meta = {_s(k): _s(v) for k, v in (await redis.hgetall(streams.epoch_meta_key(u, e))).items()}
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


async def model_rows(redis: aioredis.Redis, u: str) -> list[dict[str, Any]]:
    """Per strategy: staged vs published tiles, coverage, last version and its age."""
    rows = []
    now_ms = int(time.time() * 1000)
    for s in streams.STRATEGIES:
        staging_raw, state_raw = await redis.hmget(streams.publish_state_key(u, s), ["staging", "state"])
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
                "version_age_s": round((now_ms - int(header["asof_ns"]) / 1e6) / 1000, 1)  # type: ignore[call-overload]
                if header.get("asof_ns")
                else None,
                "last_diff_id": _s(last[0][0]) if last else None,
                "checkpoint_version": state.get("checkpoint_version"),
            }
        )
    return rows
