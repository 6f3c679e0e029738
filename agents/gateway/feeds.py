"""The gateway's live feeds: published models kept current, their events built once and off the event
loop, one model's SSE feed with exact resume, and a tab's feeds multiplexed on one connection.

A browser allows six HTTP/1.1 connections per host, so a dashboard tab holds one SSE connection that
carries every feed it shows (``tab``). On that connection each event's first ``data:`` line names its
feed (``SPX:butterfly``) and the rest is the same JSON as the per-feed endpoints send; the events have
no ``id:``, since one id cannot say where each of several feeds stands. The client knows: it
reconnects with every feed's version in the request (``SPX:butterfly@1234``) and each feed resumes
exactly after it, from the diffs stream (or from a fresh snapshot when they were trimmed).

The JSON and the compression of a snapshot cost milliseconds for a large grid (a butterfly's columns
are ~90 KB of JSON, its REST tiles 3 MB), and a REST client polling the model would make every SSE
client wait behind them: they are built in a worker thread, under the model's lock, once per version
(REST at most every REST_REFRESH_S), and shared by every client that asks (agents/gateway/sse.py
shares the compressed copy too).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from marketswarm.agents.gateway.hub import Hub, Status
from marketswarm.agents.gateway.sse import Segment, sse_event
from marketswarm.schemas import alerts, codec
from marketswarm.schemas.documents import diff_json, geometry_json
from marketswarm.schemas.history import LEVEL_SOURCES
from marketswarm.schemas.models import LEG_WEIGHTS, Geometry
from marketswarm.topology import streams
from marketswarm.topology.published import GapError, Published, diff_version
from marketswarm.topology.reading import catch_up, load_published, top_version

log = logging.getLogger(__name__)
T = TypeVar("T")

RENDERED_DIFFS = 256  # diffs kept rendered as SSE events, shared by every client (and reconnects)
RESUME_PAGE = 200  # missed diffs read per XRANGE
MAX_VERSION_DIGITS = 18  # a version longer than this is no version of ours (int64)
MAX_TAB_FEEDS = 16  # feeds one tab connection may carry
# A heatmap's whole-grid REST JSON (3 MB, 6-9 ms for a butterfly) is built at most this often.
REST_REFRESH_S = 0.25
TAB_QUEUE = 64  # events a tab's feeds may have ready before they wait for the client
CANCEL_RECHECK_S = 0.2  # a task still running this long after its cancellation is cancelled again
LEVEL_FEEDS = {f"levels.{m}": m for m in streams.LEVEL_MODELS}  # a level series as a tab's feed
MAX_LEVEL_RESUME = 2000  # level points a feed sends from history on resume (REST pages the rest)
# An underlying's alerts as a tab's feeds, one per alerts stream: "alerts" (the GEX rules),
# "alerts.intent", "alerts.best_flies"
ALERT_FEEDS = {spec.name: m for m, spec in streams.ALERTS.items()}
MAX_ALERT_RESUME = 500  # alerts a feed sends from history on resume (REST pages the rest)
TIMED_SEQ = 1000  # timed ids: ms * TIMED_SEQ + the entry's sequence number


def feed_name(u: str, strategy: str) -> str:
    """How a feed is named on a tab's connection and in its request: ``SPX:butterfly``."""
    return f"{u}:{strategy}"


def parse_version(text: str) -> int:
    """A resume point (a Last-Event-ID, or a tab feed's ``@version``) as a version; -1 (start from a
    snapshot) for anything that is not one."""
    if text.isascii() and text.isdigit() and len(text) <= MAX_VERSION_DIGITS:
        return int(text)
    return -1


@dataclass(frozen=True)
class Events:
    """One version's (or one diff's) SSE events, as the per-feed endpoints send them and tagged with
    their feed for a tab's connection."""

    plain: Segment
    tagged: Segment

    def of(self, tagged: bool) -> Segment:
        return self.tagged if tagged else self.plain


def _events(feed: str, parts: list[tuple[str, int, bytes]], *, deflate: bool) -> Events:
    plain = b"".join(sse_event(e, v, data) for e, v, data in parts)
    tagged = b"".join(sse_event(e, None, data, feed=feed) for e, v, data in parts)
    out = Events(Segment(plain), Segment(tagged))
    if deflate:  # a worker thread's job: zlib releases the GIL while it compresses
        _ = out.plain.deflated, out.tagged.deflated
    return out


def _status_events(feed: str, status: Status) -> Events:
    """``stalled`` / ``resumed``: the store stopped answering, or answers again (hub.py). No ``id:``."""
    data = orjson.dumps({"store": status.value})
    return Events(Segment(sse_event(status.value, None, data)), Segment(sse_event(status.value, None, data, feed=feed)))


@dataclass
class _Model:
    """One (underlying, strategy) as the gateway serves it: the published columns, followed
    incrementally, and what was built from them, each once per version (or epoch)."""

    published: Published
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    body: tuple[int, bytes] | None = None  # (version, REST JSON)
    body_at: float = 0.0  # when it was built (monotonic)
    snapshot: tuple[int, Events] | None = None  # (version, SSE geometry + snapshot events)
    geometry: tuple[str, bytes] | None = None  # (epoch, geometry JSON)


class ModelCache:
    """Published models kept current by applying new diffs, and their JSON built once per version in
    a worker thread: concurrent readers share one copy and one build, and the event loop stays free
    for the live feeds."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, str], _Model] = {}
        self.rendered: OrderedDict[tuple[str, bytes], Events] = OrderedDict()
        self.widths: dict[tuple[str, str], tuple[str, np.ndarray]] = {}  # (u, strategy) -> (epoch, widths)

    async def _current(self, redis: aioredis.Redis, u: str, strategy: str) -> _Model:
        """The model, caught up to the newest version; call with its lock held."""
        m = self.models[(u, strategy)]
        top = await top_version(redis, u, strategy)
        if top is not None and top != m.published.version:
            try:
                if top < m.published.version or m.published.header is None:
                    raise GapError("rebuilt")
                await catch_up(redis, u, m.published, strict=True)
            except GapError:  # a rebuilt model, or diffs trimmed past ours: start from its checkpoint
                m.published = await load_published(redis, u, strategy)
        return m

    def _model(self, u: str, strategy: str) -> _Model:
        m = self.models.get((u, strategy))
        if m is None:
            m = self.models[(u, strategy)] = _Model(Published(strategy=strategy))
        return m

    async def body(self, redis: aioredis.Redis, u: str, strategy: str) -> bytes | None:
        """The model's REST JSON (None before its first version). A heatmap's is built at most once
        per REST_REFRESH_S: within that window every request gets the copy built last (its version
        and as-of time say which), so a client polling a whole grid costs one build per window, not
        one per version; SSE is the path that carries every version."""
        m = self._model(u, strategy)
        async with m.lock:
            if m.body is not None and strategy in LEG_WEIGHTS and time.monotonic() - m.body_at < REST_REFRESH_S:
                return m.body[1]
            await self._current(redis, u, strategy)
            p = m.published
            if p.header is None:
                return None
            if m.body is None or m.body[0] != p.version:
                m.body = (p.version, await asyncio.to_thread(p.body) or b"")
                m.body_at = time.monotonic()
            return m.body[1]

    async def columns(self, redis: aioredis.Redis, u: str, strategy: str) -> tuple[Geometry, np.ndarray, bytes] | None:
        """The current version's geometry, a copy of its value columns and its header (None before the
        first version): for what is computed from a model's numbers on request (the risk graph)."""
        m = self._model(u, strategy)
        async with m.lock:
            p = (await self._current(redis, u, strategy)).published
            if p.header is None or p.geometry is None:
                return None
            return p.geometry, p.vals.copy(), p.header

    async def geometry(self, redis: aioredis.Redis, u: str, strategy: str) -> bytes | None:
        """The current epoch's geometry JSON (None before the first version)."""
        m = self._model(u, strategy)
        async with m.lock:
            await self._current(redis, u, strategy)
            return await self._geometry(m)

    async def _geometry(self, m: _Model) -> bytes | None:
        g = m.published.geometry
        if g is None:
            return None
        if m.geometry is None or m.geometry[0] != g.epoch:
            m.geometry = (g.epoch, await asyncio.to_thread(geometry_json, g))
        return m.geometry[1]

    async def snapshot(self, redis: aioredis.Redis, u: str, strategy: str) -> tuple[int, Events] | None:
        """The SSE events that start a client: the geometry, then the snapshot, with the version."""
        m = self._model(u, strategy)
        async with m.lock:
            await self._current(redis, u, strategy)
            p = m.published
            if p.header is None:
                return None
            if m.snapshot is None or m.snapshot[0] != p.version:
                geometry = await self._geometry(m) or b"null"

                def build() -> Events:
                    parts = [("geometry", p.version, geometry), ("snapshot", p.version, p.snapshot() or b"")]
                    return _events(feed_name(u, strategy), parts, deflate=True)

                m.snapshot = (p.version, await asyncio.to_thread(build))
            return m.snapshot

    async def render(
        self, redis: aioredis.Redis, u: str, strategy: str, key: str, entry_id: bytes, fields: dict[bytes, bytes]
    ) -> Events:
        """A diffs entry as SSE events (its epoch's geometry first when it starts one), built once.
        A diff is small (its changed positions); a new epoch's geometry is rare. A heatmap diff
        carries its positions' scores, from its epoch's widths."""
        cached = self.rendered.get((key, entry_id))
        if cached is not None:
            return cached
        diff = codec.decode(streams.Payload.DIFF, fields)
        widths = None
        if strategy in LEG_WEIGHTS and not diff.reset:
            widths = await self._widths(redis, u, strategy, diff.epoch)
        parts = [("diff", diff.version, diff_json(diff, widths))]
        if diff.reset and diff.geometry is not None:
            parts.insert(0, ("geometry", diff.version, geometry_json(diff.geometry)))
            self.widths[(u, strategy)] = (diff.epoch, diff.geometry.widths_x1000())
        out = self.rendered[(key, entry_id)] = _events(feed_name(u, strategy), parts, deflate=False)
        while len(self.rendered) > RENDERED_DIFFS:
            self.rendered.popitem(last=False)
        return out

    async def _widths(self, redis: aioredis.Redis, u: str, strategy: str, epoch: str) -> np.ndarray | None:
        """The widths of ``epoch``'s positions, if it is the model's current epoch (else None: an old
        epoch's diff, read by a client resuming across a new one, goes without scores)."""
        known = self.widths.get((u, strategy))
        if known is None or known[0] != epoch:
            m = self._model(u, strategy)
            async with m.lock:
                g = (await self._current(redis, u, strategy)).published.geometry
            if g is None or g.epoch != epoch:
                return None
            known = self.widths[(u, strategy)] = (g.epoch, g.widths_x1000())
        return known[1]


@dataclass(frozen=True)
class FeedSource:
    """What a feed reads: Redis for history and snapshots, the hub for live diffs, the shared cache."""

    redis: aioredis.Redis
    hub: Hub
    models: ModelCache
    max_resume_diffs: int


async def model_feed(
    src: FeedSource, u: str, strategy: str, version: int, *, tagged: bool = False
) -> AsyncGenerator[Segment, None]:
    """One model's events after ``version`` (-1: from a snapshot): the missed diffs from the diffs
    stream when they are all there and few enough, else a snapshot; then the live diffs. Ends when
    the hub cuts the client off as too slow (it reconnects and resumes). A ``stalled`` event says the
    store stopped answering, ``resumed`` that it answers again (the held-up diffs follow)."""
    redis, models = src.redis, src.models
    key = streams.DIFFS[strategy].key(u)
    q = await src.hub.subscribe(key)  # before the history is read: nothing falls between the two
    try:
        resume = False
        if version >= 0:
            first = await redis.xrange(key, count=1)
            current = await redis.xrevrange(key, count=1)
            first_v = diff_version(first[0][0]) if first else None
            top_v = diff_version(current[0][0]) if current else 0
            # Resumable when the diffs after `version` are all still in the stream, and few
            # enough that a snapshot would not be cheaper.
            resume = first_v is not None and first_v <= version + 1 and version <= top_v
            resume = resume and top_v - version <= src.max_resume_diffs
        if not resume:
            snap = await models.snapshot(redis, u, strategy)
            version = 0
            if snap is not None:
                version = snap[0]
                yield snap[1].of(tagged)
        sent = 0
        while sent <= src.max_resume_diffs:  # the missed diffs, a page at a time
            page = await redis.xrange(key, min=b"(" + f"{version}-0".encode(), count=RESUME_PAGE)
            for entry_id, fields in page:
                version = diff_version(entry_id)
                yield (await models.render(redis, u, strategy, key, entry_id, fields)).of(tagged)
            sent += len(page)
            if len(page) < RESUME_PAGE:
                break
        while True:
            item = await q.get()
            if item is None:
                return  # cut off as too slow: the client reconnects and resumes
            if isinstance(item, Status):
                yield _status_events(feed_name(u, strategy), item).of(tagged)
                continue
            entry_id, fields = item
            v = diff_version(entry_id)
            if v <= version:
                continue
            if v != version + 1:
                # A gap (the model was rebuilt): start over from a snapshot.
                snap = await models.snapshot(redis, u, strategy)
                if snap is not None:
                    version = snap[0]
                    yield snap[1].of(tagged)
                continue
            version = v
            yield (await models.render(redis, u, strategy, key, entry_id, fields)).of(tagged)
    finally:
        src.hub.unsubscribe(key, q)


def level_event(model: str, entry_id: bytes, fields: dict[bytes, bytes], feed: str | None = None) -> Segment:
    """A level point as an SSE event ``level``: ``{"model", "t", <its fields>}``, ``id:`` its time."""
    t = streams.entry_id_ms(entry_id)
    values = codec.decode(streams.Payload.LEVELS, fields)
    body = {"model": model, "t": t, **dict(zip(LEVEL_SOURCES[model], values, strict=True))}
    return Segment(sse_event("level", None if feed else t, orjson.dumps(body), feed=feed))


def timed_id(entry_id: bytes | str) -> int:
    """An entry ``<ms>-<n>`` of a stream keyed by event time as one number, ``ms * 1000 + n`` (an
    SSE id, a tab feed's ``@`` resume point); a level point's is its ms (``n`` is 0: see levels_feed)."""
    ms, _, n = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")
    return int(ms) * TIMED_SEQ + int(n or 0)


def alert_event(entry_id: bytes, fields: dict[bytes, bytes], feed: str | None = None) -> Segment:
    """An alert as an SSE event ``alert``: the alert's JSON with its entry ``id``; ``id:`` its timed id."""
    body = {"id": entry_id.decode(), **alerts.plain_json(codec.decode(streams.Payload.ALERT, fields))}
    return Segment(sse_event("alert", None if feed else timed_id(entry_id), orjson.dumps(body), feed=feed))


async def timed_feed(
    src: FeedSource, key: str, feed: str, after: int, render: Callable[[bytes, dict[bytes, bytes]], T],
    *, limit: int, tagged: bool,
) -> AsyncGenerator[T | Segment, None]:  # fmt: skip
    """A stream keyed by event time after the timed id ``after`` (-1: only new entries), at most
    ``limit`` from history, then live: each entry as ``render`` makes it, and the store's status
    events. Ends when the hub cuts the client off as too slow."""
    q = await src.hub.subscribe(key)
    try:
        last = after
        if after >= 0:
            start = f"({after // TIMED_SEQ}-{after % TIMED_SEQ}"
            for entry_id, fields in await src.redis.xrange(key, min=start, count=limit):
                last = timed_id(entry_id)
                yield render(entry_id, fields)
        while True:
            item = await q.get()
            if item is None:
                return
            if isinstance(item, Status):
                yield _status_events(feed, item).of(tagged)
                continue
            entry_id, fields = item
            if timed_id(entry_id) > last:
                last = timed_id(entry_id)
                yield render(entry_id, fields)
    finally:
        src.hub.unsubscribe(key, q)


def levels_feed(
    src: FeedSource, u: str, model: str, after_ms: int, *, tagged: bool = False
) -> AsyncGenerator[Segment, None]:
    """A model's level points after ``after_ms`` (their ids are ``<ms>-0``: a resume point is a time)."""
    feed = feed_name(u, f"levels.{model}")
    after = after_ms * TIMED_SEQ if after_ms >= 0 else -1

    def render(entry_id: bytes, fields: dict[bytes, bytes]) -> Segment:
        return level_event(model, entry_id, fields, feed if tagged else None)

    key = streams.LEVELS[model].key(u)
    return timed_feed(src, key, feed, after, render, limit=MAX_LEVEL_RESUME, tagged=tagged)


def alerts_feed(
    src: FeedSource, u: str, model: str, after: int, *, tagged: bool = False
) -> AsyncGenerator[Segment, None]:
    """The alerts of the rules watching ``model`` after the timed id ``after`` (-1: only new ones), then live."""
    spec = streams.ALERTS[model]
    feed = feed_name(u, spec.name)

    def render(entry_id: bytes, fields: dict[bytes, bytes]) -> Segment:
        return alert_event(entry_id, fields, feed if tagged else None)

    return timed_feed(src, spec.key(u), feed, after, render, limit=MAX_ALERT_RESUME, tagged=tagged)


class TabRequestError(ValueError):
    """Raised by ``parse_tab`` when a tab's ``feeds`` parameter is not a list of feeds."""


def parse_tab(spec: str, models: frozenset[str] | set[str]) -> list[tuple[str, str, int]]:
    """``SPX:butterfly@1234,SPX:market_mode,NDX:gex@7`` as (underlying, model, version) with -1 for
    "from a snapshot"; at most MAX_TAB_FEEDS, each once. The underlyings are not checked here. A
    level series (``SPX:levels.gex@<ms>``) resumes after a time instead, and alerts (``SPX:alerts@<id>``)
    (and ``SPX:alerts.intent``, ``SPX:alerts.best_flies``) after a timed id; -1 meaning new ones only."""
    out: list[tuple[str, str, int]] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, resumes, at = part.partition("@")
        u, _, model = name.partition(":")
        if not u or model not in models:
            raise TabRequestError(f"feed {part[:40]!r}: UNDERLYING:MODEL[@VERSION], a model one of {sorted(models)}")
        version = parse_version(at) if resumes else -1
        if resumes and version < 0:
            raise TabRequestError(f"feed {part[:40]!r}: the version after @ is a number")
        out.append((u.upper(), model, version))
    if not out or len(out) > MAX_TAB_FEEDS:
        raise TabRequestError(f"feeds: 1 to {MAX_TAB_FEEDS} comma-separated UNDERLYING:MODEL[@VERSION]")
    if len({(u, m) for u, m, _ in out}) != len(out):
        raise TabRequestError("feeds: each feed at most once")
    return out


async def tab(src: FeedSource, feeds: list[tuple[str, str, int]]) -> AsyncIterator[Segment]:
    """Every feed of a tab on one stream, each resuming after its own version. Each feed's events stay
    in order; feeds interleave as their diffs come. When any feed ends (cut off as too slow) or fails,
    the whole stream ends and the client reconnects with every feed's version."""
    ready: asyncio.Queue[Segment | None] = asyncio.Queue(TAB_QUEUE)

    async def pump(u: str, strategy: str, version: int) -> None:
        if strategy in LEVEL_FEEDS:
            events = levels_feed(src, u, LEVEL_FEEDS[strategy], version, tagged=True)
        elif strategy in ALERT_FEEDS:
            events = alerts_feed(src, u, ALERT_FEEDS[strategy], version, tagged=True)
        else:
            events = model_feed(src, u, strategy, version, tagged=True)
        try:
            async for seg in events:
                await ready.put(seg)
        except (RedisError, OSError):
            log.warning("tab feed %s failed; the client reconnects", feed_name(u, strategy), exc_info=True)
        finally:
            await events.aclose()
        await ready.put(None)  # the tab ends with any of its feeds (not when cancelled: it is ending)

    pumps = [asyncio.create_task(pump(u, s, v), name=f"tab:{u}:{s}") for u, s, v in feeds]
    try:
        while True:
            seg = await ready.get()
            if seg is None:
                return
            yield seg
    finally:
        await cancel_all(pumps)


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended. A cancellation that lands inside a
    redis-py command can be absorbed by it (the command completes and the task goes on: redis/redis-py
    #2028, #2551; measured here on 8.2 too), so a task still running after CANCEL_RECHECK_S is
    cancelled again, rather than waited for forever with its subscription held."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_RECHECK_S)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: a pump's errors were logged where they happened
