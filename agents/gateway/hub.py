"""Fan-out of the diffs streams to SSE clients: one plain XREAD per stream, however many clients.

A stream's reader task starts with its first subscriber and stops with its last, so Redis connections
are bounded by the number of streams watched, not the number of clients, and a client that leaves
releases everything it held. A client too slow to keep up is cut off (its queue would grow without
bound); it reconnects with Last-Event-ID and catches up from the diffs stream.

A feed follows its stream from the entry that was last when it started, whatever its subscribers
asked: a client's resume point is that client's alone (it reads its own history, paged, before it
takes the live entries), so no client can move where every other client's diffs start.

A stream's reader also watches its store: a read that has not come back STALL_AFTER_S after its BLOCK
ran out (a server paused, a network that drops without a reset), or reads failing for that long, tell
every subscriber ``Status.STALLED``; the first read that comes back tells ``Status.RESUMED``. Clients
keep their connection through a stall, see it, and get the diffs that were held up once it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

SUBSCRIBER_QUEUE = 1000  # diffs a client may fall behind before it is cut off
READ_BLOCK_MS = 5000
READ_COUNT = 100
# After a Redis error the reader waits this long before reading again (server restarting).
READER_BACKOFF_S = 0.5
# A read this late past its BLOCK (or reads failing this long) means the store is not answering.
STALL_AFTER_S = 1.5
STALL_CHECK_S = 0.25


class Status(StrEnum):
    """What a feed's subscribers are told about the store between entries."""

    STALLED = "stalled"
    RESUMED = "resumed"


# (entry id, fields); a Status; None = you were cut off
Item = tuple[bytes, dict[bytes, bytes]] | Status | None
T = TypeVar("T")


@dataclass
class _Feed:
    subscribers: set[asyncio.Queue[Item]] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    last_id: bytes | None = None  # None until the reader found where the stream ends
    started: asyncio.Event = field(default_factory=asyncio.Event)
    answered_at: float = field(default_factory=time.monotonic)  # when the store last answered
    stalled: bool = False  # subscribers were told STALLED and not yet RESUMED


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
                    top = await self._watched(key, feed, self.redis.xrevrange(key, count=1), 0.0)
                    feed.last_id = top[0][0] if top else b"0-0"
                    feed.started.set()
                block_s = READ_BLOCK_MS / 1000
                xread = self.redis.xread({key: feed.last_id}, count=READ_COUNT, block=READ_BLOCK_MS)
                resp = await self._watched(key, feed, xread, block_s)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                log.warning("diffs reader on %s failed; retrying", key, exc_info=True)
                self._check(key, feed, 0.0)
                await asyncio.sleep(READER_BACKOFF_S)
                continue
            self._answered(key, feed)
            for _, entries in resp or ():
                for entry_id, fields in entries:
                    feed.last_id = entry_id
                    self._tell(feed, (entry_id, fields))

    async def _watched(self, key: str, feed: _Feed, call: Awaitable[T], block_s: float) -> T:
        """``call``'s reply, telling the subscribers when it is STALL_AFTER_S later than ``block_s``."""
        task: asyncio.Future[T] = asyncio.ensure_future(call)
        started = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait([task], timeout=STALL_CHECK_S)
                if done:
                    return task.result()
                self._check(key, feed, block_s, started)
        finally:
            if not task.done():
                task.cancel()
                task.add_done_callback(_retrieve)

    def _check(self, key: str, feed: _Feed, block_s: float, since: float | None = None) -> None:
        """STALLED, once, when the store has not answered for STALL_AFTER_S beyond ``block_s``."""
        waited = time.monotonic() - (since if since is not None else feed.answered_at)
        if not feed.stalled and waited > block_s + STALL_AFTER_S:
            feed.stalled = True
            log.warning("the store has not answered the diffs reader on %s for %.1f s", key, waited)
            self._tell(feed, Status.STALLED)

    def _answered(self, key: str, feed: _Feed) -> None:
        feed.answered_at = time.monotonic()
        if feed.stalled:
            feed.stalled = False
            log.warning("the store answers the diffs reader on %s again", key)
            self._tell(feed, Status.RESUMED)

    @staticmethod
    def _tell(feed: _Feed, item: Item) -> None:
        for q in list(feed.subscribers):
            try:
                q.put_nowait(item)
            except asyncio.QueueFull:
                feed.subscribers.discard(q)
                with contextlib.suppress(asyncio.QueueFull):
                    q.get_nowait()
                    q.put_nowait(None)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Collect an abandoned read's outcome so it is never reported as unretrieved."""
    if not task.cancelled():
        task.exception()
