"""Writes raw frames into the per-underlying raw streams: one pipelined batch per call."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from marketswarm.schemas import codec
from marketswarm.schemas.codec import RawFrame
from marketswarm.topology import streams
from marketswarm.topology.connections import xadd_args
from marketswarm.topology.metrics import Metrics


class RawWriter:
    """Appends frames to ``ms:{U}:raw.v1`` (trimmed by time: RAW_RETENTION_S) in one round trip."""

    def __init__(self, redis: aioredis.Redis, metrics: Metrics, source: str) -> None:
        self.redis = redis
        self.metrics = metrics
        self.source = source
        self._known: set[str] = set()

    async def write(self, underlying: str, frames: Sequence[tuple[str, bytes]], rx_ns: int) -> list[bytes]:
        """Write (format, bytes) frames received at ``rx_ns``; returns the entry ids."""
        if not frames:
            return []
        key = streams.RAW.key(underlying)
        trim = xadd_args(streams.RAW, key)
        async with self.redis.pipeline(transaction=False) as pipe:
            if underlying not in self._known:
                pipe.sadd(streams.underlyings_key(), underlying)
            for fmt, data in frames:
                pipe.xadd(key, codec.encode_raw(RawFrame(src=fmt, rx_ns=rx_ns, data=data)), **trim)
            results = await pipe.execute()
        self._known.add(underlying)
        self.metrics.source_frames.labels(self.source, key).inc(len(frames))
        self.metrics.source_bytes.labels(self.source, key).inc(sum(len(d) for _, d in frames))
        return [r for r in results if isinstance(r, bytes)]
