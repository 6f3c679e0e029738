"""Writes raw frames into the per-underlying raw streams: one pipelined batch per call, gated and trimmed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from marketswarm.schemas import codec
from marketswarm.schemas.codec import RawFormat, RawFrame
from marketswarm.schemas.models import Reject
from marketswarm.schemas.rejects import RejectReason, excerpt
from marketswarm.topology import streams
from marketswarm.topology.backpressure import Gate
from marketswarm.topology.commit import Replication
from marketswarm.topology.connections import error_code
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.retention import Trimmer
from marketswarm.topology.retrying import pauses, retried
from marketswarm.topology.settings import Settings

log = logging.getLogger(__name__)

# A write the server could not take now (connection lost, a failover or resharding in progress) is
# tried again for this long, pausing RETRY_PAUSE_S between attempts, before the error reaches the
# source. A batch retried after the server applied it appears twice in the raw stream: harmless, since
# hydrate admits a value only when it is strictly newer and counts each fill once.
RETRY_FOR_S = 60.0
RETRY_PAUSE_S = 0.5
_RETRIED = (RedisConnectionError, RedisTimeoutError, RedisClusterException, OSError)
_TRANSIENT_REPLIES = ("CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK", "LOADING", "MASTERDOWN", "READONLY")


def transient(exc: Exception) -> bool:
    """A failure of the moment, worth retrying: a lost connection or timeout, or a reply that says the
    cluster is moving (MOVED, TRYAGAIN, LOADING...)."""
    if isinstance(exc, ResponseError):
        return error_code(exc) in _TRANSIENT_REPLIES
    return isinstance(exc, _RETRIED)


DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024  # Settings.max_frame_bytes' default
RAW_ENTRY_FIELDS_BYTES = 40  # a raw entry's fields beside its data: names, format, receive time

# Never shed: chain snapshots declare the contracts; index values are one small frame per second.
KEEP_FRAMES = (RawFormat.REST_CHAIN, RawFormat.REST_INDICES, RawFormat.CBOE_CSV)


def events_in(fmt: str, data: bytes) -> int:
    """Market events in a raw frame (approximate: elements of a WebSocket frame), for the shed count."""
    return data.count(b'"ev"') if fmt in (RawFormat.WS, RawFormat.WS_DELAYED) else 1


class RawWriter:
    """Appends frames to ``ms:{U}:raw.v1`` in one round trip, then keeps the stream within its bounds.

    A frame larger than ``max_frame_bytes`` is never stored: its reject (reason ``oversized``, its size
    and first bytes) goes to the underlying's rejects stream, counted. With a ``gate``
    (topology/backpressure.py) it sheds market frames, counted, while the agents of the underlying are
    too far behind, or while the raw stream is over its byte bound because they have not read enough
    of it; chain snapshots and index values always go through. With ``replicas`` it waits (WAIT, on
    the same connection) until that many replicas have the frames."""

    def __init__(
        self,
        redis: aioredis.Redis,
        metrics: Metrics,
        source: str,
        gate: Gate | None = None,
        *,
        replicas: int = 0,
        timeout_ms: int = 1000,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self.redis = redis
        self.max_frame_bytes = max_frame_bytes
        self.metrics = metrics
        self.source = source
        self.gate = gate
        self.replication = (
            Replication(replicas, timeout_ms, lambda _: metrics.replica_lag.labels(f"source.{source}").inc())
            if replicas
            else None
        )
        self.trimmer = Trimmer(redis, metrics, f"source.{source}")
        self._known: set[str] = set()

    @classmethod
    def of(
        cls, settings: Settings, redis: aioredis.Redis, metrics: Metrics, source: str, gate: Gate | None = None
    ) -> RawWriter:
        """A writer with the deployment's replication setting."""
        return cls(
            redis,
            metrics,
            source,
            gate,
            replicas=settings.min_replicas_ack,
            timeout_ms=settings.replica_ack_timeout_ms,
            max_frame_bytes=settings.max_frame_bytes,
        )

    async def write(self, underlying: str, frames: Sequence[tuple[str, bytes]], rx_ns: int) -> list[bytes]:
        """Write (format, bytes) frames received at ``rx_ns``; returns the entry ids."""
        if not frames:
            return []
        key = streams.RAW.key(underlying)
        oversized = [(f, d) for f, d in frames if len(d) > self.max_frame_bytes]
        if oversized:
            await self._reject_oversized(underlying, oversized, rx_ns)
            frames = [(f, d) for f, d in frames if len(d) <= self.max_frame_bytes]
            if not frames:
                return []
        if self.gate is not None and await self._closed(self.gate, underlying, key):
            shed = [(f, d) for f, d in frames if f not in KEEP_FRAMES]
            if shed:
                self.metrics.shed.labels(self.source, key).inc(len(shed))
                self.metrics.shed_events.labels(self.source, key).inc(sum(events_in(f, d) for f, d in shed))
            frames = [(f, d) for f, d in frames if f in KEEP_FRAMES]
            if not frames:
                return []
        blocked = self.metrics.source_write_blocked.labels(self.source)
        outage = False

        async def attempt() -> list[object]:
            if underlying not in self._known:  # a global key: its own slot, its own command
                await self.redis.sadd(streams.underlyings_key(), underlying)
                self._known.add(underlying)
            return await self._append(key, frames, rx_ns)

        def failed(exc: Exception, n: int) -> None:
            nonlocal outage
            if n == 1:  # once per outage, not every pause
                log.warning(
                    "%s: writing %s failed (%s); trying again for up to %.0fs", self.source, key, exc, RETRY_FOR_S
                )
            outage = True
            blocked.set(1)
            self.metrics.redis_errors.labels(f"source.{self.source}", key).inc()

        waits = pauses(RETRY_PAUSE_S, RETRY_PAUSE_S, for_s=RETRY_FOR_S)
        results = await retried(attempt, retry_if=transient, waits=waits, failed=failed)
        if outage:
            log.warning("%s: writing %s again", self.source, key)
        blocked.set(0)  # whichever write was blocked (a poll that gave up too), writes go through now
        self.metrics.source_frames.labels(self.source, key).inc(len(frames))
        written = sum(len(d) for _, d in frames)
        self.metrics.source_bytes.labels(self.source, key).inc(written)
        await self.trimmer.after_write(streams.RAW, key, written=written + len(frames) * RAW_ENTRY_FIELDS_BYTES)
        return [r for r in results if isinstance(r, bytes)]

    async def _closed(self, gate: Gate, underlying: str, key: str) -> bool:
        """Market frames are shed now: the raw stream is over its bound because a group has not read
        enough of it, or the agents are too far behind (the gate)."""
        if self.trimmer.held(key):
            await self.trimmer.after_write(streams.RAW, key)  # shedding writes nothing: re-measure (once a second)
        return self.trimmer.held(key) or not await gate.open(underlying)

    async def _reject_oversized(self, underlying: str, frames: Sequence[tuple[str, bytes]], rx_ns: int) -> None:
        """Each frame's reject, in the underlying's rejects stream (bounded by count at the XADD)."""
        key = streams.REJECTS.key(underlying)
        for fmt, data in frames:
            detail = f"{fmt} frame of {len(data)} bytes > max_frame_bytes {self.max_frame_bytes}"
            log.warning("%s: %s on %s: not stored", self.source, detail, underlying)
            reject = Reject(
                reason=RejectReason.OVERSIZED, detail=detail, source=self.source, rx_ns=rx_ns, excerpt=excerpt(data)
            )
            fields = codec.encode_reject(reject)
            await retried(
                partial(self.redis.xadd, key, fields, maxlen=streams.REJECTS_MAXLEN, approximate=True),
                retry_if=transient,
                waits=pauses(RETRY_PAUSE_S, RETRY_PAUSE_S, for_s=RETRY_FOR_S),
            )
            self.metrics.rejects.labels(f"source.{self.source}", key, RejectReason.OVERSIZED).inc()

    async def _append(self, key: str, frames: Sequence[tuple[str, bytes]], rx_ns: int) -> list[object]:
        """One round trip: the XADDs of one key (one slot, one connection, on a cluster too), then
        the WAIT on that same connection when replicas must acknowledge."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for fmt, data in frames:
                pipe.xadd(key, codec.encode_raw(RawFrame(src=fmt, rx_ns=rx_ns, data=data)))
            if self.replication is not None:
                self.replication.queue_wait(pipe, self.redis, key)
            results: list[object] = await pipe.execute()
        if self.replication is not None:
            self.replication.check(results.pop())
        return results
