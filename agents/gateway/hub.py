"""Fan-out of the diffs streams to SSE clients: one plain XREAD per stream, however many clients.

A stream's reader task starts with its first subscriber and stops with its last, so Redis connections
are bounded by the number of streams watched, not the number of clients, and a client that leaves
releases everything it held. A client too slow to keep up is cut off (its queue would grow without
bound); it reconnects with Last-Event-ID and catches up from the diffs stream.

A feed follows its stream from the entry that was last when it started, whatever its subscribers
asked: a client's resume point is that client's alone (it reads its own history, paged, before it
takes the live entries), so no client can move where every other client's diffs start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

SUBSCRIBER_QUEUE = 1000  # diffs a client may fall behind before it is cut off
READ_BLOCK_MS = 5000
READ_COUNT = 100
# After a Redis error the reader waits this long before reading again (server restarting).
READER_BACKOFF_S = 0.5

Item = tuple[bytes, dict[bytes, bytes]] | None  # (entry id, fields); None = you were cut off


@dataclass
class _Feed:
    subscribers: set[asyncio.Queue[Item]] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    last_id: bytes | None = None  # None until the reader found where the stream ends
    started: asyncio.Event = field(default_factory=asyncio.Event)


class Hub:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.feeds: dict[str, _Feed] = {}

    async def subscribe(self, key: str) -> asyncio.Queue[Item]:
        """A queue receiving every entry of ``key`` added after this returns (the feed's start, for
        its first subscriber): read the history up to now after subscribing, and nothing is missed."""
        feed = self.feeds.get(key)
        if feed is None:
            feed = self.feeds[key] = _Feed()
        q: asyncio.Queue[Item] = asyncio.Queue(SUBSCRIBER_QUEUE)
        feed.subscribers.add(q)
        if feed.task is None or feed.task.done():
            feed.task = asyncio.create_task(self._read(key, feed), name=f"hub:{key}")
        try:
            await feed.started.wait()
        except BaseException:
            self.unsubscribe(key, q)
            raise
        return q

    def unsubscribe(self, key: str, q: asyncio.Queue[Item]) -> None:
        feed = self.feeds.get(key)
        if feed is None:
            return
        feed.subscribers.discard(q)
        if not feed.subscribers:
            if feed.task is not None:
                feed.task.cancel()
            del self.feeds[key]

    async def close(self) -> None:
        for feed in list(self.feeds.values()):
            if feed.task is not None:
                feed.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await feed.task
        self.feeds.clear()

    async def _read(self, key: str, feed: _Feed) -> None:
        while feed.subscribers:
            try:
                if feed.last_id is None:
                    top = await self.redis.xrevrange(key, count=1)
                    feed.last_id = top[0][0] if top else b"0-0"
                    feed.started.set()
                resp = await self.redis.xread({key: feed.last_id}, count=READ_COUNT, block=READ_BLOCK_MS)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                log.warning("diffs reader on %s failed; retrying", key, exc_info=True)
                await asyncio.sleep(READER_BACKOFF_S)
                continue
            for _, entries in resp or ():
                for entry_id, fields in entries:
                    feed.last_id = entry_id
                    for q in list(feed.subscribers):
                        try:
                            q.put_nowait((entry_id, fields))
                        except asyncio.QueueFull:
                            feed.subscribers.discard(q)
                            with contextlib.suppress(asyncio.QueueFull):
                                q.get_nowait()
                                q.put_nowait(None)
