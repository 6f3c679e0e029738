"""Stream retention: every stream bounded in bytes (and age), never trimmed past what a group still needs.

XADD's own MAXLEN/MINID can express neither "at most this many bytes" nor "but keep what a group has
not acknowledged", so writers append without trimming and a ``Trimmer`` trims each stream they wrote,
at most once per ``TRIM_INTERVAL_S``. It reads the stream's memory use (MEMORY USAGE, sampled), its
first and last entry times and its groups' positions (XINFO GROUPS, then XPENDING for the oldest
unacknowledged entry), and cuts with ``XTRIM MINID ~`` at the newest point that satisfies the byte
and age bounds, held back to the oldest entry any group has not acknowledged, and to a floor its
writer may name (a publisher keeps the diffs after its last checkpoint). Bytes are assumed to spread
evenly over the entries' times; the next trim corrects what that misses.

When holding back would keep a stream above ``HARD_FACTOR`` times its bound, the bound wins and the
entries cut before a group read them are counted (``marketswarm_trimmed_unread_total``): memory stays
bounded even with a group that never reads. Sources apply backpressure long before that
(topology/backpressure.py), so in operation nothing is trimmed unread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from marketswarm.topology import streams
from marketswarm.topology.metrics import Metrics

log = logging.getLogger(__name__)

TRIM_INTERVAL_S = 1.0  # a stream is trimmed at most this often by one writer
# Holding back for a group is allowed up to this multiple of a stream's byte bound; beyond it the
# bound wins (counted as trimmed unread): a group that never reads cannot exhaust the server.
HARD_FACTOR = 4.0
MEMORY_SAMPLES = 5  # MEMORY USAGE samples: enough for listpack-sized stream nodes

Id = tuple[int, int]


def parse_id(raw: bytes | str) -> Id:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def fmt_id(i: Id) -> str:
    return f"{i[0]}-{i[1]}"


@dataclass(frozen=True)
class TrimPlan:
    """Where a stream is cut, and why: ``cut`` by its bounds, ``safe`` as far as its groups allow."""

    usage_bytes: int
    cut: Id | None  # entries below this id are beyond the byte or age bound
    safe: Id | None  # the oldest entry a group (or the writer's floor) still needs; None = no limit


def plan(
    spec: streams.StreamSpec,
    usage_bytes: int,
    first: Id,
    last: Id,
    groups: list[tuple[Id | None, Id]],
    floor: Id | None,
) -> TrimPlan:
    """The pure part of a trim. ``groups``: (oldest pending id or None, last delivered id) per group."""
    cuts: list[Id] = []
    if spec.max_age_s is not None:
        cuts.append((last[0] - spec.max_age_s * 1000, 0))
    if usage_bytes > spec.max_bytes and last[0] > first[0]:
        drop = 1.0 - spec.max_bytes / usage_bytes
        cuts.append((first[0] + int(drop * (last[0] - first[0])) + 1, 0))
    cut = max(cuts) if cuts else None
    needs = [floor] if floor is not None else []
    for oldest_pending, delivered in groups:
        needs.append(oldest_pending if oldest_pending is not None else (delivered[0], delivered[1] + 1))
    return TrimPlan(usage_bytes, cut, min(needs) if needs else None)


class Trimmer:
    """Trims the streams one writer appends to; call ``after_write`` after each commit."""

    def __init__(self, redis: aioredis.Redis, metrics: Metrics, writer: str, interval_s: float = TRIM_INTERVAL_S):
        self.redis = redis
        self.metrics = metrics
        self.writer = writer
        self.interval_s = interval_s
        self._next: dict[str, float] = {}

    async def after_write(self, spec: streams.StreamSpec, key: str, floor: str | None = None) -> None:
        """Trim ``key`` if its turn came (at most once per interval); errors are logged, not raised:
        a missed trim is made up by the next one."""
        now = time.monotonic()
        if now < self._next.get(key, 0.0):
            return
        self._next[key] = now + self.interval_s
        try:
            await self.trim(spec, key, floor)
        except (RedisError, RedisClusterException, OSError) as exc:
            log.warning("%s: trimming %s failed: %s", self.writer, key, exc)

    async def trim(self, spec: streams.StreamSpec, key: str, floor: str | None = None) -> int:
        """One trim now; returns the entries removed."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", MEMORY_SAMPLES)
            pipe.xinfo_stream(key)
            pipe.xinfo_groups(key)
            usage, info, groups = await pipe.execute(raise_on_error=False)
        for reply in (usage, info, groups):
            if isinstance(reply, BaseException) and not isinstance(reply, ResponseError):
                raise reply  # the server, not the key: a connection lost, a failover in progress
        if isinstance(info, ResponseError) or not info or not info.get("first-entry"):
            return 0  # no such stream, or empty
        usage_bytes = int(usage or 0) if not isinstance(usage, ResponseError) else 0
        self.metrics.stream_memory.labels(key).set(usage_bytes)
        group_rows = [] if isinstance(groups, ResponseError) else groups
        pending = [g for g in group_rows if int(g["pending"])]
        oldest: dict[bytes | str, Id] = {}
        if pending:
            async with self.redis.pipeline(transaction=False) as pipe:
                for g in pending:
                    pipe.xpending(key, g["name"])
                for g, summary in zip(pending, await pipe.execute(), strict=True):
                    if summary and summary.get("min"):
                        oldest[g["name"]] = parse_id(summary["min"])
        p = plan(
            spec,
            usage_bytes,
            parse_id(info["first-entry"][0]),
            parse_id(info["last-entry"][0]),
            [(oldest.get(g["name"]), parse_id(g["last-delivered-id"])) for g in group_rows],
            parse_id(floor) if floor else None,
        )
        if p.cut is None:
            return 0
        removed = 0
        target = p.cut if p.safe is None else min(p.cut, p.safe)
        if target > parse_id(info["first-entry"][0]):
            removed = int(await self.redis.xtrim(key, minid=fmt_id(target), approximate=True))
        if p.safe is not None and p.safe < p.cut:
            self.metrics.retention_held.labels(self.writer, key).inc()
            if usage_bytes > HARD_FACTOR * spec.max_bytes:
                unread = int(await self.redis.xtrim(key, minid=fmt_id(p.cut), approximate=True))
                if unread:
                    log.error(
                        "%s: %s is %.0f MiB, beyond %.0fx its bound: trimmed %d entries a group had not read",
                        self.writer, key, usage_bytes / streams.MiB, HARD_FACTOR, unread,
                    )  # fmt: skip
                    self.metrics.trimmed_unread.labels(self.writer, key).inc(unread)
                removed += unread
        if removed:
            self.metrics.trimmed.labels(self.writer, key).inc(removed)
        return removed
