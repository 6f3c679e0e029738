"""Time travel: a published model as it stood at a past time, and the level history, read back from
the history streams (topology/history.py says what the publishers write there).

``model_at`` answers the version in force at a time: the last version whose as-of time is at or
before it. While the diffs after a checkpoint or keyframe at or before that version are retained,
it is that version exactly (the same bytes REST served for it); beyond them it is the version in
force at the minute boundary of the newest keyframe at or before the time. A read costs a binary
search over the retained diffs (one entry per probe) and at most ``MAX_DIFFS_AT`` diffs applied.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from marketswarm.schemas import codec
from marketswarm.schemas.history import LEVEL_SOURCES, Keyframe, Values, merge_levels
from marketswarm.schemas.models import Columns, Diff, Geometry
from marketswarm.topology import streams
from marketswarm.topology.published import (
    GapError,
    Published,
    apply_diffs,
    checkpoint_read,
    diff_version,
    from_checkpoint,
)

MAX_DIFFS_AT = 600  # diffs applied to answer one time (checkpoints are at most 200 versions apart)
DIFFS_PAGE = 200
GEOMETRY_CACHE = 16  # decoded geometries kept by (underlying, strategy, epoch)


class HistoryError(LookupError):
    """Raised when there is no model for the time asked: the message says what history there is."""


@dataclass
class At:
    """A model as it stood at a time: ``exact`` when it is the version in force then; otherwise the
    version in force at the boundary of the minute's keyframe (``boundary_ms``)."""

    published: Published
    exact: bool
    boundary_ms: int | None = None


_geometries: OrderedDict[tuple[str, str, str], Geometry] = OrderedDict()


def _decode_diff(fields: dict[bytes, bytes]) -> Diff:
    return codec.decode(streams.Payload.DIFF, fields)  # type: ignore[no-any-return]


async def _target(redis: aioredis.Redis, key: str, end_ns: int) -> tuple[int, Diff] | None:
    """The last retained diff published before ``end_ns`` (as-of times only grow with versions): a
    binary search, one entry read per probe. None when the first retained one is later."""
    first = await redis.xrange(key, count=1)
    if not first or _decode_diff(first[0][1]).asof_ns >= end_ns:
        return None
    last = await redis.xrevrange(key, count=1)
    top = _decode_diff(last[0][1])
    if top.asof_ns < end_ns:
        return diff_version(last[0][0]), top
    lo, lo_diff = diff_version(first[0][0]), _decode_diff(first[0][1])
    hi = diff_version(last[0][0])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        found = await redis.xrange(key, min=f"{mid}-0", count=1)
        v = diff_version(found[0][0]) if found else hi
        if v >= hi:
            hi = mid
            continue
        d = _decode_diff(found[0][1])
        if d.asof_ns < end_ns:
            lo, lo_diff = v, d
        else:
            hi = v
    return lo, lo_diff


async def _geometry(redis: aioredis.Redis, u: str, strategy: str, epoch: str) -> Geometry | None:
    """An epoch's geometry: the geometries stream (newest first), else the model's checkpoint."""
    cached = _geometries.get((u, strategy, epoch))
    if cached is not None:
        _geometries.move_to_end((u, strategy, epoch))
        return cached
    found: Geometry | None = None
    for entry_id, fields in await redis.xrevrange(streams.GEOMETRIES[strategy].key(u)):
        del entry_id
        if fields.get(b"epoch") == epoch.encode():
            found = codec.decode(streams.Payload.GEOMETRY, fields)
            break
    if found is None:
        command = checkpoint_read(u, strategy)
        current = from_checkpoint(strategy, await redis.hmget(command[1], list(command[2:])))
        if current.geometry is not None and current.geometry.epoch == epoch:
            found = current.geometry
    if found is not None:
        _geometries[(u, strategy, epoch)] = found
        while len(_geometries) > GEOMETRY_CACHE:
            _geometries.popitem(last=False)
    return found


async def from_keyframe(redis: aioredis.Redis, u: str, strategy: str, frame: Keyframe) -> Published:
    """The model a keyframe or a recent checkpoint holds."""
    out = Published(strategy=strategy)
    out.header, out.version = zlib.decompress(frame.header) if frame.zipped else frame.header, frame.version
    if frame.cols is not None:
        geometry = await _geometry(redis, u, strategy, frame.epoch)
        if geometry is None:
            raise HistoryError(f"the geometry of epoch {frame.epoch} of {u} {strategy} is no longer kept")
        out.start(geometry)
        raw = zlib.decompress(frame.cols) if frame.zipped else frame.cols
        out._take(codec.decode_packed(raw, Columns))
    return out


async def _newest_at(redis: aioredis.Redis, key: str, at_ms: int) -> tuple[int, Keyframe] | None:
    """The newest entry of a keyframes or checkpoints stream at or before ``at_ms``: (its ms, frame)."""
    found = await redis.xrevrange(key, max=str(at_ms), min="-", count=1)
    if not found:
        return None
    return streams.entry_id_ms(found[0][0]), codec.decode(streams.Payload.KEYFRAME, found[0][1])


async def model_at(redis: aioredis.Redis, u: str, strategy: str, at_ms: int) -> At:
    """The model ``strategy`` of ``u`` as it stood at ``at_ms`` (epoch ms, the end of that ms); raises
    HistoryError when nothing of it is kept from that time."""
    key = streams.DIFFS[strategy].key(u)
    target = await _target(redis, key, (at_ms + 1) * 1_000_000)
    if target is not None:
        version, diff = target
        if strategy in streams.DERIVED:  # a derived model's diff holds its whole document
            p = Published(strategy=strategy)
            p.header, p.version = diff.header, version
            return At(p, exact=True)
        exact = await _replayed(redis, u, strategy, at_ms, version)
        if exact is not None:
            return At(exact, exact=True)
    frame = await _newest_at(redis, streams.KEYFRAMES[strategy].key(u), at_ms)
    if frame is None:
        raise HistoryError(f"no {strategy} model of {u} is kept from that time")
    return At(await from_keyframe(redis, u, strategy, frame[1]), exact=False, boundary_ms=frame[0])


async def _replayed(redis: aioredis.Redis, u: str, strategy: str, at_ms: int, version: int) -> Published | None:
    """Version ``version``, from the newest checkpoint or keyframe at or before ``at_ms`` and the diffs
    after it; None when those diffs are not all retained or too many."""
    bases: list[Keyframe] = []
    for stream in (streams.CHECKPOINTS[strategy], streams.KEYFRAMES[strategy]):
        found = await _newest_at(redis, stream.key(u), at_ms)
        if found is not None and found[1].version <= version:
            bases.append(found[1])
    command = checkpoint_read(u, strategy)
    current = from_checkpoint(strategy, await redis.hmget(command[1], list(command[2:])))
    best: Published | None = current if current.header is not None and current.version <= version else None
    newest = max(bases, key=lambda f: f.version, default=None)
    if newest is not None and (best is None or newest.version > best.version):
        try:
            best = await from_keyframe(redis, u, strategy, newest)
        except HistoryError:
            best = best if best is not None and best.version <= version else None
    if best is None or version - best.version > MAX_DIFFS_AT:
        return None
    key = streams.DIFFS[strategy].key(u)
    try:
        while best.version < version:
            page = await redis.xrange(
                key, min=f"({best.version}-0", max=f"{version}-0", count=min(DIFFS_PAGE, version - best.version)
            )
            if not page:
                return None
            apply_diffs(best, key, [(i.decode(), _decode_diff(f)) for i, f in page], strict=True)
    except GapError:
        return None
    return best


async def levels_between(
    redis: aioredis.Redis, u: str, from_ms: int, to_ms: int, limit: int
) -> tuple[dict[str, list[Any]], int | None]:
    """The level history of ``u`` from ``from_ms`` to ``to_ms`` (inclusive) as columns (see
    ``merge_levels``), at most ``limit`` rows, and where the next page starts (None: this is all)."""
    async with redis.pipeline(transaction=False) as pipe:
        for model in LEVEL_SOURCES:
            key = streams.LEVELS[model].key(u)
            pipe.xrange(key, min=str(from_ms), max=str(to_ms), count=limit + 1)
            pipe.xrevrange(key, max=f"({from_ms}", min="-", count=1)
        replies = await pipe.execute()
    series: dict[str, list[tuple[int, Values]]] = {}
    seeds: dict[str, Values | None] = {}
    for i, model in enumerate(LEVEL_SOURCES):
        points, before = replies[2 * i], replies[2 * i + 1]
        series[model] = [(streams.entry_id_ms(e), codec.decode(streams.Payload.LEVELS, f)) for e, f in points]
        seeds[model] = codec.decode(streams.Payload.LEVELS, before[0][1]) if before else None
    return merge_levels(series, seeds, limit)


async def levels_span(redis: aioredis.Redis, u: str) -> tuple[int, int] | None:
    """The first and last time of ``u``'s level history (epoch ms), None when there is none."""
    async with redis.pipeline(transaction=False) as pipe:
        for model in LEVEL_SOURCES:
            key = streams.LEVELS[model].key(u)
            pipe.xrange(key, count=1)
            pipe.xrevrange(key, count=1)
        replies = await pipe.execute()
    times = [streams.entry_id_ms(r[0][0]) for r in replies if r]
    return (min(times), max(times)) if times else None
