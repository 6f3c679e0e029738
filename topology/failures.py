"""Entries that failed: their errors, their delivery counts, and their dead letters.

A failing entry stays pending with its error recorded in ``<stream>.errors`` (a hash, kept until the
entry is acked or dead-lettered); delivered more than ``max_deliveries`` times, it moves to
``<stream>.dlq`` with that error (the runtime commits the move, fenced and acked like any batch).
An attempt that met the server rather than the entry (a connection lost, a failover) is
"interrupted": read again after the pause, it does not count toward dead-lettering.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis

from marketswarm.topology import streams
from marketswarm.topology.agent import Output
from marketswarm.topology.connections import text

log = logging.getLogger(__name__)

# Error texts kept for pending entries expire after this long (they only matter until the entry
# is acked or dead-lettered, which happens within max_deliveries * min_idle_ms).
ERROR_TTL_S = 24 * 3600
# Interrupted entries remembered at most (ids another consumer acked since are never cleared here).
MAX_INTERRUPTED = 100_000
# Dead-letter entries keep at most this much of the error text.
MAX_ERROR_CHARS = 2000


class Failures:
    """The failures of one agent's consumer: recorded errors and interrupted attempts."""

    def __init__(self, redis: aioredis.Redis, group: str, consumer: str) -> None:
        self.redis = redis
        self.group = group
        self.consumer = consumer
        self.errors: dict[str, str] = {}
        self.interrupted: set[str] = set()

    async def record(self, key: str, entry_id: str, error: str) -> None:
        """Leave the entry pending (to be retried) and keep its error for the dead letter."""
        self.errors[entry_id] = error
        self.interrupted.discard(entry_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(streams.errors_key(key), entry_id, error[:MAX_ERROR_CHARS])
            pipe.expire(streams.errors_key(key), ERROR_TTL_S)
            await pipe.execute()

    def interrupt(self, ids: Iterable[str]) -> None:
        """These entries' attempt met the server, not their own fault."""
        if len(self.interrupted) > MAX_INTERRUPTED:
            self.interrupted.clear()
        self.interrupted.update(ids)

    def settled(self, ids: Iterable[str]) -> None:
        """These entries were acked (committed or dead-lettered): nothing to remember."""
        for i in ids:
            self.errors.pop(i, None)
            self.interrupted.discard(i)

    async def delivery_counts(self, key: str, ids: Sequence[str]) -> dict[str, int]:
        """How often each of ``ids`` (pending for this consumer, in order) was delivered."""
        rows = await self.redis.xpending_range(
            key, self.group, min=ids[0], max=ids[-1], count=len(ids), consumername=self.consumer
        )
        return {text(r["message_id"]): int(r["times_delivered"]) for r in rows}

    async def dead_letters(self, key: str, dead: Sequence[tuple[str, dict[bytes, bytes], int]]) -> list[Output]:
        """The dead-letter entries of ``(entry id, fields, deliveries)``: the original fields, the
        group, the deliveries and the last error recorded by any consumer."""
        dlq = streams.dlq_key(key)
        errors = await self.redis.hmget(streams.errors_key(key), [d[0] for d in dead])
        outputs = []
        for (entry_id, fields, deliveries), err in zip(dead, errors, strict=True):
            error = text(err) if err is not None else self.errors.get(entry_id, "no error recorded (consumer died)")
            record: dict[str, Any] = {f"orig.{text(k)}": v for k, v in fields.items()}
            record.update(
                {"id": entry_id, "group": self.group, "deliveries": deliveries, "error": error[:MAX_ERROR_CHARS]}
            )
            outputs.append(Output(streams.DLQ, dlq, record))
            log.error(
                "%s: dead-lettered %s of %s after %d deliveries: %s", self.group, entry_id, key, deliveries, error
            )
        return outputs
