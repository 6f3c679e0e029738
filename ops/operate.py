"""Operating a running system: offsets (show, reset), rebuild, contract and tile drill-downs.

The command line (ops/commands.py) renders these; tests call them directly. Every function takes
a client and returns plain data, so `--json` is the same data the tables show.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis

from marketswarm.agents import catalog
from marketswarm.schemas import codec
from marketswarm.schemas.documents import position_of, tile_json
from marketswarm.schemas.occ import parse_occ
from marketswarm.topology import streams
from marketswarm.topology.connections import ensure_group, text
from marketswarm.topology.observe import group_rows, known_underlyings
from marketswarm.topology.reading import load_published


class LiveConsumersError(RuntimeError):
    """Raised when offsets would be moved under a group whose consumers are alive (use --force)."""


def parse_position(to: str) -> str:
    """``start`` -> ``0``; an entry id as is; an ISO time (``2025-11-24T15:00:00Z``) -> its ms id."""
    if to == "start":
        return "0"
    if to in ("end", "$"):
        return "$"
    head = to.split("-")[0]
    if head.isdigit() and (to.count("-") == 1 or to.isdigit()):
        return to if "-" in to else f"{to}-0"
    when = dt.datetime.fromisoformat(to.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return f"{int(when.timestamp() * 1000)}-0"


async def live_consumers(redis: aioredis.Redis, agent: str) -> list[str]:
    """Consumers of an agent with a fresh heartbeat."""
    prefix = streams.heartbeat_key(agent, "")
    return sorted([text(k)[len(prefix) :] async for k in redis.scan_iter(match=prefix + "*")])


async def offsets(redis: aioredis.Redis, underlyings: Sequence[str]) -> list[dict[str, Any]]:
    return await group_rows(redis, await known_underlyings(redis, underlyings), catalog.agents())


async def reset_offsets(
    redis: aioredis.Redis, group: str, to: str, underlyings: Sequence[str], *, force: bool = False
) -> list[dict[str, Any]]:
    """XGROUP SETID for one agent's group on every underlying; refuses while consumers live."""
    spec = catalog.by_name(group)
    alive = await live_consumers(redis, group)
    if alive and not force:
        raise LiveConsumersError(f"{group} has live consumers {alive}: stop them first or pass --force")
    position = parse_position(to)
    done = []
    for u in await known_underlyings(redis, underlyings):
        key = spec.reads.key(u)
        await ensure_group(redis, key, group)  # a group (and stream) not there yet is created first
        await redis.xgroup_setid(key, group, position)
        done.append({"group": group, "stream": key, "position": position})
    return done


def derived_keys(u: str) -> list[str]:
    """Every key derived from the raw stream of ``u`` (not raw input, not dead letters)."""
    keys = [streams.EVENTS.key(u), streams.REJECTS.key(u), streams.CHANGES.key(u)]
    keys += [streams.epoch_pointer_key(u), streams.epochs_index_key(u), streams.fills_key(u), streams.spot_key(u)]
    keys.append(streams.vol_index_key(u))
    for s in streams.STRATEGIES:
        keys += [
            streams.STAGED[s].key(u),
            streams.DIFFS[s].key(u),
            streams.model_key(u, s),
            streams.publish_state_key(u, s),
            streams.calc_checkpoint_key(u, s),
            streams.calc_flushes_key(u, s),
        ]
    for d in streams.DERIVED:
        keys += [streams.DIFFS[d].key(u), streams.model_key(u, d), streams.derive_checkpoint_key(u, d)]
    return keys


async def rebuild(redis: aioredis.Redis, underlyings: Sequence[str], *, force: bool = False) -> dict[str, Any]:
    """Clear derived state and streams and rewind normalize to the start of the raw streams: the
    running (or next started) agents rebuild every model from the retained raw input."""
    specs = catalog.agents()
    alive = {s.name: c for s in specs if (c := await live_consumers(redis, s.name))}
    if alive and not force:
        raise LiveConsumersError(f"agents are running {alive}: stop them first or pass --force")
    us = await known_underlyings(redis, underlyings)
    deleted = 0
    for u in us:
        epochs = [text(e) for e in await redis.zrange(streams.epochs_index_key(u), 0, -1)]
        keys = derived_keys(u)
        keys += [streams.epoch_meta_key(u, e) for e in epochs] + [streams.state_key(u, e) for e in epochs]
        for spec in specs:
            keys += [streams.errors_key(spec.reads.key(u))]
            for lease in (streams.lease_key(u, spec.name), streams.lease_token_key(u, spec.name)):
                keys.append(lease)
        deleted += await redis.delete(*keys)
        raw = streams.RAW.key(u)
        if await redis.exists(raw):
            await reset_offsets(redis, "normalize", "start", [u], force=True)
    return {
        "underlyings": us,
        "keys_deleted": deleted,
        "raw_entries": {u: await redis.xlen(streams.RAW.key(u)) for u in us},
    }


async def contract(redis: aioredis.Redis, symbol: str, history: int = 20) -> dict[str, Any]:
    """One contract's state in the active epoch and its latest admitted changes."""
    o = parse_occ(symbol)
    u = o.underlying
    pointer = await redis.get(streams.epoch_pointer_key(u))
    epoch = text(pointer) if pointer is not None else None
    out: dict[str, Any] = {"symbol": o.occ, "underlying": u, "epoch": epoch, "in_epoch": False, "slots": {}}
    if epoch:
        fields = [o.occ, f"{o.occ}|q", f"{o.occ}|t", f"{o.occ}|g", f"{o.occ}|v"]
        meta, q, t, g, v = await redis.hmget(streams.state_key(u, epoch), fields)
        out["in_epoch"] = meta is not None
        for name, raw in (("quote", q), ("trade", t), ("greeks", g)):
            if raw is not None:
                out["slots"][name] = orjson.loads(raw[32:])
        out["volume"] = int(v) if v is not None else 0
    changes: list[dict[str, Any]] = []
    needle = f'"sym":"{o.occ}"'.encode()
    async for entry_id, batch_fields in _scan_back(redis, streams.CHANGES.key(u)):
        if needle in batch_fields.get(b"data", b""):
            batch = codec.decode(streams.Payload.CHANGES, batch_fields)
            for ch in batch.changes:
                if getattr(ch, "sym", None) == o.occ:
                    changes.append({"entry": text(entry_id), **orjson.loads(codec.encode_json(ch))})
        if len(changes) >= history:
            break
    out["history"] = changes[:history]
    return out


async def _scan_back(redis: aioredis.Redis, key: str, page: int = 200, limit: int = 20_000) -> Any:
    """Entries of a stream, newest first, a page at a time, at most ``limit``."""
    last = "+"
    seen = 0
    while seen < limit:
        entries = await redis.xrevrange(key, max=last, count=page)
        if not entries:
            return
        for entry_id, fields in entries:
            yield entry_id, fields
        seen += len(entries)
        last = "(" + text(entries[-1][0])


async def tile(redis: aioredis.Redis, u: str, strategy: str, key: str) -> dict[str, Any]:
    """One published tile and the current state of its legs."""
    published = await load_published(redis, u, strategy)
    g = published.geometry
    pos = position_of(g, key) if g is not None else None
    raw = tile_json(g, published.vals, published.cts, pos) if g is not None and pos is not None else None
    if raw is None:
        example = None
        if g is not None:
            present = np.flatnonzero(~np.isnan(published.vals[:, 0]))
            if len(present) and (first := tile_json(g, published.vals, published.cts, int(present[0]))):
                example = orjson.loads(first)["k"]  # what a key looks like
        return {
            "underlying": u,
            "strategy": strategy,
            "key": key,
            "version": published.version,
            "tile": None,
            "example": example,
        }
    t = orjson.loads(raw)
    legs = [await contract(redis, leg, history=0) for leg in t.get("legs", [])]
    return {"underlying": u, "strategy": strategy, "key": key, "version": published.version, "tile": t, "legs": legs}


async def rates(redis: aioredis.Redis, underlyings: Sequence[str], interval_s: float = 1.0) -> list[dict[str, Any]]:
    """Entries read per second by every group over ``interval_s`` (from XINFO entries-read), with lag."""
    before = {(r["agent"], r["stream"]): r for r in await offsets(redis, underlyings)}
    t0 = time.monotonic()
    await asyncio.sleep(interval_s)
    after = await offsets(redis, underlyings)
    elapsed = time.monotonic() - t0
    out = []
    for row in after:
        prev = before.get((row["agent"], row["stream"]))
        rate = None
        if prev and row.get("entries_read") is not None and prev.get("entries_read") is not None:
            rate = (row["entries_read"] - prev["entries_read"]) / elapsed
        out.append({**row, "entries_per_s": rate})
    return out
