"""Read-only views of streams and consumer groups, as Redis reports them: lengths, lag, pending.

The inspector (`marketswarm inspect`), `marketswarm top`, the gateway's /metrics and readiness, the
sources' backpressure and the in-process topology's drain all read groups through here, so every
view names the same things the same way and computes lag the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from marketswarm.topology import streams
from marketswarm.topology.agent import AgentSpec
from marketswarm.topology.connections import find_group, text


def id_ms(entry_id: Any) -> int | None:
    """An entry id's time in ms; None for None or something that is not an entry id."""
    try:
        return streams.entry_id_ms(entry_id)
    except (ValueError, AttributeError, TypeError):
        return None


# Entries counted, at most, for a group whose lag the server does not know (a bound, not a scan).
LAG_COUNT_MAX = 100_000


async def known_underlyings(redis: aioredis.Redis, configured: Sequence[str] = ()) -> list[str]:
    members = {text(m) for m in await redis.smembers(streams.underlyings_key())}
    return sorted(members | set(configured))


def stream_specs() -> list[streams.StreamSpec]:
    specs = [streams.RAW, streams.EVENTS, streams.REJECTS, streams.CHANGES]
    specs += [streams.STAGED[s] for s in streams.STRATEGIES]
    specs += [streams.DIFFS[s] for s in streams.MODELS]
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
                "first_id": text(first[0][0]) if first else None,
                "last_id": text(last[0][0]) if last else None,
                "last_ms": id_ms(last[0][0]) if last else None,
                "retention": f"{spec.max_bytes // streams.MiB} MiB"
                + (f", {spec.max_age_s // 60} min" if spec.max_age_s else ""),
            }
        )
    return rows


async def group_rows(
    redis: aioredis.Redis, underlyings: Sequence[str], specs: Sequence[AgentSpec]
) -> list[dict[str, Any]]:
    """Every agent's group on every underlying: consumers, lag, pending, oldest pending idle.
    Two round trips whatever the number of groups: XINFO GROUPS, then XPENDING where needed."""
    pairs = [(spec.name, u, spec.reads.key(u)) for spec in specs for u in underlyings]
    versioned = {spec.reads.key(u) for spec in specs for u in underlyings if spec.reads.versioned}
    async with redis.pipeline(transaction=False) as pipe:
        for _, _, key in pairs:
            pipe.xinfo_groups(key)
        infos = await pipe.execute(raise_on_error=False)
    found: list[tuple[str, str, str, dict[Any, Any] | None]] = []
    for (name, u, key), info in zip(pairs, infos, strict=True):
        if isinstance(info, BaseException) and not isinstance(info, ResponseError):
            raise info  # the server, not the key: a connection lost, a failover in progress
        groups = [] if isinstance(info, ResponseError) else info
        found.append((name, u, key, find_group(groups, name)))
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
                pipe.xrange(key, min="(" + text(row["last-delivered-id"]), count=LAG_COUNT_MAX)
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
                "versioned": key in versioned,
                "consumers": int(g["consumers"]),
                "lag": int(g["lag"]) if g.get("lag") is not None else counted[(name, key)],
                "pending": int(g["pending"]),
                "entries_read": None if g.get("entries-read") is None else int(g["entries-read"]),
                "last_delivered": text(g["last-delivered-id"]),
                "oldest_pending_idle_ms": oldest.get((name, key)),
            }
        )
    return rows


async def add_lag_seconds(redis: aioredis.Redis, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each group row with how far behind it is, in the unit its stream's ids have: ``lag_s``, how long
    ago (server time) its oldest unread entry was added, on streams whose ids are times; on a diffs
    stream, whose ids are versions, ``lag_versions``, the versions it has not read. 0 with nothing
    unread; ``behind`` says either for a person. One round trip for all the groups that lag."""
    for r in rows:
        r["lag_s"] = r["lag_versions"] = None
        if r.get("exists") and r.get("versioned"):
            r["lag_versions"] = 0
        elif r.get("exists"):
            r["lag_s"] = 0.0
    behind = [r for r in rows if r.get("exists") and r.get("lag")]
    if behind:
        async with redis.pipeline(transaction=False) as pipe:
            for r in behind:
                if r.get("versioned"):
                    pipe.xrevrange(r["stream"], count=1)
                else:
                    pipe.xrange(r["stream"], min="(" + r["last_delivered"], count=1)
            ends = await pipe.execute()
        secs, micros = await redis.time()
        now_ms = int(secs) * 1000 + int(micros) // 1000
        for r, end in zip(behind, ends, strict=True):
            t = id_ms(end[0][0]) if end else None
            if r.get("versioned"):
                delivered = id_ms(r["last_delivered"]) or 0
                r["lag_versions"] = None if t is None else max(t - delivered, 0)
            else:
                r["lag_s"] = None if t is None else round(max(now_ms - t, 0) / 1000, 3)
    for r in rows:
        if r["lag_versions"] is not None:
            r["behind"] = f"{r['lag_versions']} version" + ("" if r["lag_versions"] == 1 else "s")
        else:
            r["behind"] = None if r["lag_s"] is None else f"{r['lag_s']:.1f} s"
    return rows


async def backlog(
    redis: aioredis.Redis, underlyings: Sequence[str], specs: Sequence[AgentSpec], *, missing: int = 0
) -> int:
    """Entries not yet read, or read and not acknowledged, over every group of ``specs`` on
    ``underlyings``; a group (or stream) not there yet counts ``missing``."""
    total = 0
    for row in await group_rows(redis, underlyings, specs):
        total += int(row["lag"] or 0) + int(row["pending"]) if row["exists"] else missing
    return total


async def missing_groups(redis: aioredis.Redis, underlyings: Sequence[str], specs: Sequence[AgentSpec]) -> list[str]:
    """Readiness: ``<agent> on <stream>`` for every group of ``specs`` that does not exist yet."""
    return [f"{r['agent']} on {r['stream']}" for r in await group_rows(redis, underlyings, specs) if not r["exists"]]
