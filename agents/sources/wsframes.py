"""WebSocket frames into the raw streams: stamped and buffered on the socket's read path, routed to
their underlying and written in pipelined batches off it.

A frame keeps the provider's exact bytes: a text frame is written as its UTF-8 (what the provider
sent), a binary one as it came, never re-decoded with replacement characters. Routing reads one field
per element, the symbol's root (the characters before its date), mapped to its underlying once per
root: a frame whose elements are all of one underlying (the usual case) goes to that underlying's
stream as it came; a frame mixing underlyings is split, each part an array of its elements' own
text, byte for byte as the provider sent them (only the brackets and commas around them are new).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from functools import partial

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from marketswarm.agents.sources.writer import RawWriter
from marketswarm.schemas import codec
from marketswarm.schemas.models import Reject
from marketswarm.schemas.occ import INDEX_PREFIX, PROVIDER_PREFIX, VOL_INDEX, underlying_of_root
from marketswarm.schemas.rejects import RejectReason, excerpt
from marketswarm.topology import streams
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.retrying import pauses, retried
from marketswarm.topology.settings import Settings

log = logging.getLogger(__name__)

WRITE_BATCH_FRAMES = 200
# A batch Redis did not take is tried again after this pause, doubling up to the maximum: a server
# restart of a few seconds costs a few seconds, and a long outage costs Redis one attempt per 5 s.
WRITE_RETRY_MIN_S = 0.25
WRITE_RETRY_MAX_S = 5.0
WRITE_RETRIED = (RedisError, RedisClusterException, OSError)  # a batch is held through these, never dropped
OCC_TAIL = 15  # an OCC symbol ends with YYMMDD, C/P and eight strike digits: the root is before them
MAX_ROOTS = 10_000  # roots remembered at most
UNKNOWN = "?"  # elements no underlying can be named for (normalize rejects them, with their reason)


_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"


def element_texts(text: str) -> list[str]:
    """The provider's own text of each element of a JSON array, in order (a frame split by underlying
    keeps every element's bytes; only the array around them is rebuilt)."""
    n = len(text)

    def skip(i: int) -> int:
        while i < n and text[i] in _SPACE:
            i += 1
        return i

    i = skip(0)
    if i >= n or text[i] != "[":
        raise ValueError("not an array")
    i = skip(i + 1)
    out: list[str] = []
    if i < n and text[i] == "]":
        return out
    while True:
        _, end = _DECODER.raw_decode(text, i)
        out.append(text[i:end])
        i = skip(end)
        if i < n and text[i] == ",":
            i = skip(i + 1)
        elif i < n and text[i] == "]":
            return out
        else:
            raise ValueError(f"no ',' or ']' at {i}")


class FramePump:
    """The frames of one source's WebSocket connections, from the socket to the raw streams."""

    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        metrics: Metrics,
        writer: RawWriter,
        stop: asyncio.Event,
        ws_format: str,
    ) -> None:
        self.redis = redis
        self.metrics = metrics
        self.writer = writer
        self.stop = stop
        self.ws_format = ws_format
        self.configured = set(settings.underlyings)
        self.buffer: asyncio.Queue[tuple[int, str | bytes]] = asyncio.Queue(settings.ws_buffer_frames)
        self.roots: dict[str, str | None] = {}  # OCC root -> its underlying (None: not a root)

    def put(self, frame: str | bytes) -> None:
        """Stamp and buffer one frame; a full buffer drops it, counted (``buffer_full``)."""
        try:
            self.buffer.put_nowait((time.time_ns(), frame))
        except asyncio.QueueFull:
            self.metrics.dropped.labels("source.massive", "ws", "buffer_full").inc()
        self.metrics.ws_buffer_depth.labels("massive").set(self.buffer.qsize())

    def underlying_of(self, sym: str) -> str | None:
        """The underlying an element's symbol names (an option's root, or an index), or None."""
        if sym.startswith(PROVIDER_PREFIX):
            root = sym[len(PROVIDER_PREFIX) : -OCC_TAIL]
            if root not in self.roots:
                if len(self.roots) >= MAX_ROOTS:  # bounded under hostile input; real roots are few
                    self.roots.clear()
                self.roots[root] = underlying_of_root(root) if 0 < len(root) <= 6 and root.isalnum() else None
            return self.roots[root]
        if sym.startswith(INDEX_PREFIX):
            return sym[len(INDEX_PREFIX) :]
        return None

    def route(self, data: bytes) -> tuple[dict[str, bytes], list[str]]:
        """Split a frame by underlying (exact bytes when one underlying has it all); statuses seen. The
        volatility index (``I:VIX``) goes to every underlying's stream."""
        elements = orjson.loads(data)
        if not isinstance(elements, list):
            raise ValueError("frame is not a list")
        groups: dict[str, list[int]] = {}
        statuses = []
        for i, el in enumerate(elements):
            u = None
            if isinstance(el, dict):
                if el.get("ev") == "status":
                    statuses.append(str(el.get("status")))
                    continue
                sym = el.get("sym") or el.get("T")
                if isinstance(sym, str):
                    u = self.underlying_of(sym)
            u = u or UNKNOWN
            if u == VOL_INDEX and u not in self.configured:  # the volatility index is every underlying's input
                for each in self.configured:
                    groups.setdefault(each, []).append(i)
                continue
            if u != UNKNOWN and u not in self.configured:
                self.metrics.dropped.labels("source.massive", "ws", "unconfigured_underlying").inc()
                continue
            groups.setdefault(u, []).append(i)
        if UNKNOWN in groups:  # elements we cannot attribute go to every stream, where normalize rejects them
            odd = groups.pop(UNKNOWN)
            for u in groups or {next(iter(self.configured)): []}:
                groups.setdefault(u, []).extend(odd)
                groups[u].sort()
        if len(groups) == 1 and sum(len(g) for g in groups.values()) == len(elements):
            return {next(iter(groups)): data}, statuses
        try:
            spans = element_texts(data.decode())
        except (ValueError, RecursionError):  # orjson took it, the scanner did not: re-encode the elements
            return {u: orjson.dumps([elements[i] for i in idx]) for u, idx in groups.items()}, statuses
        return {u: ("[" + ",".join(spans[i] for i in idx) + "]").encode() for u, idx in groups.items()}, statuses

    async def write_frames(self) -> None:
        """Drain the buffer in pipelined batches (off the socket's read path). A batch Redis cannot
        take (the server restarting, a failover) is retried with backoff until it can, never
        dropped: meanwhile the buffer fills, and what overflows it is counted as ``buffer_full``."""
        while not self.stop.is_set():
            try:
                first = await asyncio.wait_for(self.buffer.get(), 0.5)
            except TimeoutError:
                continue
            batch = [first]
            while len(batch) < WRITE_BATCH_FRAMES and not self.buffer.empty():
                batch.append(self.buffer.get_nowait())
            self.metrics.ws_buffer_depth.labels("massive").set(self.buffer.qsize())
            failing = False

            def failed(exc: Exception, n: int) -> None:
                nonlocal failing
                if n == 1:
                    log.error("massive: Redis is not taking frames (%s); holding them and retrying", exc)
                failing = True
                self.metrics.redis_errors.labels("source.massive", "ws").inc()
                self.metrics.source_write_blocked.labels("massive").set(1)

            try:
                await retried(
                    partial(self._write_batch, batch),
                    retry_if=lambda exc: isinstance(exc, WRITE_RETRIED),
                    waits=pauses(WRITE_RETRY_MIN_S, WRITE_RETRY_MAX_S),
                    failed=failed,
                    stop=self.stop,
                )
            except WRITE_RETRIED:
                if not self.stop.is_set():
                    raise
                return  # stopping while Redis was not taking them: the batch was never written
            if failing:
                log.warning("massive: Redis takes frames again; %d buffered", self.buffer.qsize())
                self.metrics.source_write_blocked.labels("massive").set(0)

    async def _write_batch(self, batch: list[tuple[int, str | bytes]]) -> None:
        edge = streams.REJECTS.key(streams.EDGE)
        per_u: dict[str, list[tuple[str, bytes]]] = {}
        rx = batch[-1][0]
        for rx_i, frame in batch:
            data = frame.encode() if isinstance(frame, str) else frame
            try:
                routed, statuses = self.route(data)
            except (orjson.JSONDecodeError, ValueError) as exc:
                reject = Reject(
                    reason=RejectReason.MALFORMED_JSON,
                    detail=str(exc),
                    source="massive.ws",
                    rx_ns=rx_i,
                    excerpt=excerpt(data),
                )
                fields = codec.encode_reject(reject)
                await self.redis.xadd(edge, fields, maxlen=streams.REJECTS_MAXLEN, approximate=True)
                self.metrics.rejects.labels("source.massive", edge, RejectReason.MALFORMED_JSON).inc()
                continue
            for s in statuses:
                self.metrics.ws_statuses.labels("massive", s).inc()
            for u, payload in routed.items():
                per_u.setdefault(u, []).append((self.ws_format, payload))
        for u, frames in per_u.items():
            await self.writer.write(u, frames, rx)
