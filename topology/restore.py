"""Restoring an agent's state: one mechanism for every stateful agent, run by the runtime.

A processor (topology/agent.py) keeps its state in Redis as its commits wrote it: a checkpoint,
written atomically with an XACK, and the entries acknowledged since. Restoring reads what the
processor names (``state_reads``), hands the replies to its pure ``load``, then reads the entries
each ``Resume`` names and hands them to its pure ``reapply``, until nothing more is named. The
processor never touches Redis itself; the reads here are the only ones a restore makes. A step's
side input (``Processor.side_reads``) is read here too (``read_side``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from marketswarm.schemas import codec
from marketswarm.topology.agent import Entry, Processor
from marketswarm.topology.connections import find_group, text

ENTRIES_PER_READ = 1000  # a replay of entries after a checkpoint is read in pages of this many
MAX_PENDING = 1_000_000  # pending entries looked at (more than a group holds under any bound)


async def restore(
    redis: aioredis.Redis,
    processor: Processor,
    group: str,
    u: str,
    accepts: Callable[[Mapping[bytes, bytes]], bool] | None = None,
) -> None:
    """Rebuild ``processor``'s state for underlying ``u`` as of what ``group`` acknowledged.

    Entries of its input the agent does not take (``accepts``), and entries that cannot be decoded,
    are left out, as its step left them out when they were first delivered."""
    todo = list(processor.load(await run_reads(redis, processor.state_reads())))
    while todo:
        resume = todo.pop(0)
        key = resume.stream.key(u)
        raw = await (
            acked_since(redis, key, group, resume.after) if resume.acked else entries_after(redis, key, resume.after)
        )
        entries = []
        for entry_id, fields in raw:
            if resume.acked and accepts is not None and not accepts(fields):
                continue  # of its input, an entry the step never took
            try:
                entries.append(Entry(text(entry_id), codec.decode(resume.stream.payload, fields)))
            except codec.DecodeError:
                continue
        todo[:0] = processor.reapply(resume.stream, entries)


async def run_reads(redis: aioredis.Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """The replies of ``commands``, read in one round trip (none without commands)."""
    if not commands:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute())


async def read_side(redis: aioredis.Redis, processor: Processor) -> None:
    """A step's side input: the processor's ``side_reads``, their replies handed to ``take_side``."""
    commands = processor.side_reads()
    if commands:
        processor.take_side(await run_reads(redis, commands))


async def entries_after(redis: aioredis.Redis, key: str, after_id: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Every entry of ``key`` after ``after_id``, in order (read in pages)."""
    out: list[tuple[bytes, dict[bytes, bytes]]] = []
    start = "(" + after_id
    while True:
        page = await redis.xrange(key, min=start, count=ENTRIES_PER_READ)
        out += page
        if len(page) < ENTRIES_PER_READ:
            return out
        start = "(" + text(page[-1][0])


async def acked_since(
    redis: aioredis.Redis, key: str, group: str, after_id: str
) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Entries of ``key`` after ``after_id`` that ``group`` has read and acknowledged, in order.

    Stateful agents checkpoint now and then, and on restore re-apply what they acknowledged since
    their checkpoint (entries still pending will be delivered again and are left out)."""
    row = find_group(await redis.xinfo_groups(key), group)
    if row is None:
        return []
    pending = {r["message_id"] for r in await redis.xpending_range(key, group, "-", "+", MAX_PENDING)}
    entries = await redis.xrange(key, min="(" + after_id, max=row["last-delivered-id"])
    return [(i, f) for i, f in entries if i not in pending]
