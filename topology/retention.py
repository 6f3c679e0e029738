"""Stream retention: every stream bounded in bytes (and age), never trimmed past what a group still needs.

XADD's own MAXLEN/MINID can express neither "at most this many bytes" nor "but keep what a group has
not acknowledged", so writers append without trimming and a ``Trimmer`` trims each stream they wrote:
at most once per ``TRIM_INTERVAL_S``, or at once when the writer has added ``EARLY_FRACTION`` of the
bound since the last trim (it counts the bytes it writes), so a stream never runs far past its bound
between two trims, whatever the entry sizes.

A trim measures the stream exactly (MEMORY USAGE over every node: a sample of the first nodes, Redis'
default, misses a few large entries among small ones), reads its groups' positions (XINFO GROUPS, then
XPENDING for the oldest unacknowledged entry) and, when the stream is over its bound, finds on the
server where to cut for the bytes it must lose (``CUT_FOR_BYTES`` sums the oldest entries' sizes),
then cuts with ``XTRIM MINID ~`` down to ``TRIM_TO`` of the bound, held back to the oldest entry any
group has not acknowledged and to a floor its writer may name (a publisher keeps the diffs after its
last checkpoint). It measures again and repeats, up to ``MAX_ROUNDS``, while the stream is still over.
The age bound cuts by entry time. The metric ``marketswarm_stream_memory_bytes`` is the exact measure.

When holding back would keep a stream above ``HARD_FACTOR`` times its bound, the bound wins and the
entries cut before a group read them are counted (``marketswarm_trimmed_unread_total``): memory stays
bounded even with a group that never reads. Sources apply backpressure long before that: they shed
while their agents are behind (topology/backpressure.py), and while their stream is over its bound
because a group holds it (``Trimmer.held``), so in operation nothing is trimmed unread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from marketswarm.topology import streams
from marketswarm.topology.agent import Output
from marketswarm.topology.metrics import Metrics

log = logging.getLogger(__name__)

TRIM_INTERVAL_S = 1.0  # a stream is trimmed at most this often by one writer...
EARLY_FRACTION = 0.04  # ...or as soon as it wrote this fraction of the stream's bound since the last trim
TRIM_TO = 0.9  # a stream over its bound is cut to this fraction of it: room for the writes until the next
MAX_ROUNDS = 4  # measure-and-cut rounds of one trim (the byte cut is an estimate; the measure is exact)
# Holding back for a group is allowed up to this multiple of a stream's byte bound; beyond it the
# bound wins (counted as trimmed unread): a group that never reads cannot exhaust the server.
HARD_FACTOR = 4.0
ENTRY_OVERHEAD = 16  # bytes of a stream entry beyond its fields' (ids, listpack headers), roughly

# The id of the oldest entry to keep so that the entries before it hold at least ARGV[1] bytes
# (fields and ENTRY_OVERHEAD each); false when that is the whole stream. Server-side: no entry travels.
CUT_FOR_BYTES = """
local need = tonumber(ARGV[1])
local overhead = tonumber(ARGV[2])
local start = '-'
local sum = 0
while true do
  local page = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 200)
  if #page == 0 then
    return false
  end
  for _, entry in ipairs(page) do
    if sum >= need then
      return entry[1]
    end
    local size = overhead
    for _, part in ipairs(entry[2]) do
      size = size + #part
    end
    sum = sum + size
  end
  start = '(' .. page[#page][1]
end
"""

Id = tuple[int, int]


def parse_id(raw: bytes | str) -> Id:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def fmt_id(i: Id) -> str:
    return f"{i[0]}-{i[1]}"


def entry_bytes(fields: Mapping[Any, Any]) -> int:
    """What an entry of ``fields`` adds to a stream, as ``CUT_FOR_BYTES`` counts it."""
    size = ENTRY_OVERHEAD
    for k, v in fields.items():
        size += len(k) + (len(v) if isinstance(v, bytes | str) else len(str(v)))
    return size


@dataclass(frozen=True)
class TrimPlan:
    """Where a stream is cut, and why: ``cut`` by its bounds, ``safe`` as far as its groups allow."""

    cut: Id | None  # entries below this id are beyond the byte or age bound
    safe: Id | None  # the oldest entry a group (or the writer's floor) still needs; None = no limit


def plan(
    spec: streams.StreamSpec,
    bytes_cut: Id | None,
    last: Id,
    groups: list[tuple[Id | None, Id]],
    floor: Id | None,
) -> TrimPlan:
    """The pure part of a trim. ``bytes_cut``: the first entry to keep for the byte bound (None: within
    it); ``groups``: (oldest pending id or None, last delivered id) per group."""
    cuts = [bytes_cut] if bytes_cut is not None else []
    if spec.max_age_s is not None and not spec.versioned:  # a version is no time
        cuts.append((last[0] - spec.max_age_s * 1000, 0))
    cut = max(cuts) if cuts else None
    needs = [floor] if floor is not None else []
    for oldest_pending, delivered in groups:
        needs.append(oldest_pending if oldest_pending is not None else (delivered[0], delivered[1] + 1))
    return TrimPlan(cut, min(needs) if needs else None)


class Trimmer:
    """Trims the streams one writer appends to; call ``after_write`` after each write or commit."""

    def __init__(self, redis: aioredis.Redis, metrics: Metrics, writer: str, interval_s: float = TRIM_INTERVAL_S):
        self.redis = redis
        self.metrics = metrics
        self.writer = writer
        self.interval_s = interval_s
        self._next: dict[str, float] = {}
        self._written: dict[str, int] = {}  # bytes written to a stream since its last trim
        self._held: set[str] = set()  # streams over their bound because a group holds them

    def held(self, key: str) -> bool:
        """The stream was over its bound at its last trim because a group had not read enough of it:
        a source sheds until it is not (backpressure in bytes; the gate counts entries)."""
        return key in self._held

    async def after_write(self, spec: streams.StreamSpec, key: str, floor: str | None = None, written: int = 0) -> None:
        """Trim ``key`` if its turn came (once per interval, or at once past ``EARLY_FRACTION`` of its
        bound written); errors are logged, not raised: a missed trim is made up by the next one."""
        now = time.monotonic()
        since = self._written[key] = self._written.get(key, 0) + written
        if now < self._next.get(key, 0.0) and since < spec.max_bytes * EARLY_FRACTION:
            return
        self._next[key] = now + max(self.interval_s, spec.trim_every_s)
        self._written[key] = 0
        try:
            await self.trim(spec, key, floor)
        except (RedisError, RedisClusterException, OSError) as exc:
            log.warning("%s: trimming %s failed: %s", self.writer, key, exc)

    async def after_commit(
        self,
        outputs: Sequence[Output],
        writes: Sequence[tuple[str, streams.StreamSpec]],
        floor_of: Callable[[str], str | None],
    ) -> None:
        """``after_write`` for every stream a commit appended ``outputs`` to, and for the agent's other
        streams (``writes``: key, spec), each with its writer's floor and the bytes just written."""
        written = {out.key: out.spec for out in outputs}
        written.update(dict(writes))
        sizes: dict[str, int] = {}
        for out in outputs:
            sizes[out.key] = sizes.get(out.key, 0) + entry_bytes(out.fields)
        for key, spec in written.items():
            await self.after_write(spec, key, floor_of(key), sizes.get(key, 0))

    async def usage(self, key: str) -> int:
        """The stream's exact memory use (every node measured), 0 when there is no such key."""
        return int(await self.redis.execute_command("MEMORY", "USAGE", key, "SAMPLES", 0) or 0)

    async def trim(self, spec: streams.StreamSpec, key: str, floor: str | None = None) -> int:
        """One trim now (up to MAX_ROUNDS measure-and-cut rounds); returns the entries removed."""
        removed = 0
        for _ in range(MAX_ROUNDS):
            n, again = await self._round(spec, key, floor)
            removed += n
            if not again:
                break
        if removed:
            self.metrics.trimmed.labels(self.writer, key).inc(removed)
            self.metrics.stream_memory.labels(key).set(await self.usage(key))  # what is left, measured
        return removed

    async def _round(self, spec: streams.StreamSpec, key: str, floor: str | None) -> tuple[int, bool]:
        """(entries removed, whether the stream is still over its bound with more it may lose)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", 0)
            pipe.xinfo_stream(key)
            pipe.xinfo_groups(key)
            usage, info, groups = await pipe.execute(raise_on_error=False)
        for reply in (usage, info, groups):
            if isinstance(reply, BaseException) and not isinstance(reply, ResponseError):
                raise reply  # the server, not the key: a connection lost, a failover in progress
        if isinstance(info, ResponseError) or not info or not info.get("first-entry"):
            self._held.discard(key)
            return 0, False  # no such stream, or empty
        usage_bytes = int(usage or 0) if not isinstance(usage, ResponseError) else 0
        self.metrics.stream_memory.labels(key).set(usage_bytes)
        bytes_cut: Id | None = None
        if usage_bytes > spec.max_bytes:
            found = await self.redis.eval(
                CUT_FOR_BYTES, 1, key, usage_bytes - int(spec.max_bytes * TRIM_TO), ENTRY_OVERHEAD
            )
            last = parse_id(info["last-entry"][0])
            bytes_cut = parse_id(found) if found else (last[0], last[1] + 1)
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
        first = parse_id(info["first-entry"][0])
        p = plan(
            spec,
            bytes_cut,
            parse_id(info["last-entry"][0]),
            [(oldest.get(g["name"]), parse_id(g["last-delivered-id"])) for g in group_rows],
            parse_id(floor) if floor else None,
        )
        held = p.cut is not None and p.safe is not None and p.safe < p.cut
        if held and usage_bytes > spec.max_bytes:
            self._held.add(key)
        else:
            self._held.discard(key)
        if p.cut is None:
            return 0, False
        removed = 0
        target = p.cut if p.safe is None else min(p.cut, p.safe)
        if target > first:
            removed = int(await self.redis.xtrim(key, minid=fmt_id(target), approximate=True))
        if held:
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
        return removed, removed > 0 and bytes_cut is not None
