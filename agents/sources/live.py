"""The live Massive source, through the official ``massive`` client: a chain poller and WebSocket feeds.

Chain poller (per underlying): REST option-chain snapshot (``/v3/snapshot/options/I:SPX`` for
indices), all pages (``next_url`` carries an opaque cursor and is followed as given), filtered to the
strikes within ``chain_range_pct`` of spot and the expiries of the next ``chain_expiry_days`` days
(0DTE first). One poll is one raw frame (the pages' exact bytes in a JSON array). Its cadence follows
its own measured latency (``CADENCE_FACTOR`` x the last poll, bounded by ``chain_poll_min_s``/
``chain_poll_max_s``); polls never overlap, and a failed poll (429/5xx/network) doubles the interval up
to the maximum. A 403 (``NOT_AUTHORIZED``: the plan lacks the data) is logged once with what to do.

Subscriptions: the poll also chooses the contracts the WebSocket subscribes to: valid option tickers
of the underlying (deduplicated; a ticker normalize would reject is never subscribed), not yet past
their expiry's 16:00 ET close, nearest expiry first, then nearest to the money; at most 1,000 quote
contracts per connection as the provider allows, over ``ws_connections`` connections. Contracts are
dropped at their close, not at midnight. A contract stays on its connection while it is wanted, and a
change subscribes and unsubscribes only the difference.

WebSocket: options ``T`` and ``Q`` and index ``V`` (the underlyings' indices and, with them, ``I:VIX``,
the volatility index every underlying's models take as an input: it is written to every underlying's
stream; with ETF underlyings alone no indices feed is opened, and the models have no VIX). Mode
``targeted`` subscribes ``T`` and ``Q`` for the chosen contracts; mode ``firehose`` subscribes ``T.*``
(every option trade; other underlyings are dropped at the edge) plus targeted ``Q``. The socket's read
path only appends the frame to a bounded buffer (the provider disconnects slow consumers); a writer task
routes frames by underlying and writes them in pipelined batches. Frames from the delayed feed are written
as ``massive.ws.delayed``.

Reconnects: every reconnect waits a jittered, exponentially growing delay (``reconnect_delay``); the
client's own immediate reconnects are off. The provider enforces the plan's connection limit by
evicting the *oldest* connection: it sends ``max_connections`` (after ``auth_success``) and closes it
with 1008. An eviction is logged once per feed with what to do, counted in
``marketswarm_ws_evictions_total``, and handled so it never flaps: when this process's own newer
connection caused it, the process runs one option connection fewer (the plan allows fewer than
``ws_connections``); when another process did, this feed backs off from ``EVICTED_BACKOFF_S`` to
``EVICTED_BACKOFF_MAX_S``, so two processes on one key trade the connection at most that often
instead of knocking each other off forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlparse

import orjson
import redis.asyncio as aioredis
from massive import RESTClient, WebSocketClient
from massive.exceptions import AuthError, BadResponse
from redis.exceptions import RedisClusterException, RedisError
from websockets.exceptions import ConnectionClosed

from marketswarm.agents.sources.subscriptions import (
    MAX_QUOTES_PER_CONNECTION,
    Assignment,
    Target,
    next_close,
    subscription_set,
    wanted,
)
from marketswarm.agents.sources.writer import RawWriter
from marketswarm.agents.sources.wsframes import FramePump
from marketswarm.schemas.codec import RawFormat
from marketswarm.schemas.markettime import ET
from marketswarm.schemas.occ import INDEX_PREFIX, VOL_INDEX_TICKER, provider_index_ticker
from marketswarm.topology.agent import AgentSpec
from marketswarm.topology.backpressure import Gate
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.settings import Settings
from marketswarm.topology.stopping import pause

log = logging.getLogger(__name__)

CADENCE_FACTOR = 4.0  # wait this many times the last poll's latency before the next one
PAGE_LIMIT = 250  # the provider's largest page for chain snapshots
RECONNECT_BASE_S = 1.0  # the first reconnect waits up to this long (full jitter), doubling per failure
RECONNECT_MAX_S = 60.0
STABLE_CONNECTION_S = 300.0  # a connection that lived this long starts the next backoff from the base
EVICTED_BACKOFF_S = 30.0  # after an eviction by another process, at least this long ...
EVICTED_BACKOFF_MAX_S = 600.0  # ... doubling per consecutive eviction up to this
SELF_EVICTION_WINDOW_S = 10.0  # an eviction this soon after our own newer connection opened is ours
_STATUS_LOG = re.compile(r"server (\w+): (.*?)( \(x(\d+)\))?$")
_MAX_CONNECTIONS = '"max_connections"'


def chain_filter(spot: float | None, settings: Settings, today: dt.date) -> dict[str, Any]:
    """Query parameters of a filtered chain poll: ATM strike range and relevant expiries."""
    params: dict[str, Any] = {
        "limit": PAGE_LIMIT,
        "expiration_date.gte": today.isoformat(),
        "expiration_date.lte": (today + dt.timedelta(days=settings.chain_expiry_days)).isoformat(),
    }
    if spot:
        params["strike_price.gte"] = round(spot * (1 - settings.chain_range_pct / 100), 2)
        params["strike_price.lte"] = round(spot * (1 + settings.chain_range_pct / 100), 2)
    return params


def next_interval(latency_s: float, failed: bool, previous_s: float, settings: Settings) -> float:
    """The poller's cadence: a multiple of its latency, doubled after a failure, within bounds."""
    if failed:
        return min(settings.chain_poll_max_s, max(settings.chain_poll_min_s, previous_s * 2))
    return min(settings.chain_poll_max_s, max(settings.chain_poll_min_s, latency_s * CADENCE_FACTOR))


def reconnect_delay(failures: int, evictions: int, rng: random.Random) -> float:
    """How long to wait before reconnecting: full jitter over an exponential bound (so many clients
    never reconnect in step), and after evictions by another process never less than
    ``EVICTED_BACKOFF_S`` doubled per consecutive eviction."""
    bound = min(RECONNECT_MAX_S, RECONNECT_BASE_S * 2 ** max(failures - 1, 0))
    delay = rng.uniform(0.1 * bound, bound)
    if evictions:
        floor = min(EVICTED_BACKOFF_MAX_S, EVICTED_BACKOFF_S * 2 ** (evictions - 1))
        delay = max(delay, rng.uniform(floor, min(EVICTED_BACKOFF_MAX_S, 1.5 * floor)))
    return delay


@dataclass
class Connection:
    """One WebSocket connection's bookkeeping (it survives the client objects of its reconnects)."""

    feed: str  # metric label: massive.options / massive.indices
    market: str
    slot: int
    subscriptions: Callable[[], list[str]]
    opened: float = 0.0  # monotonic time of the last connect
    evicted: bool = False  # the provider sent max_connections on this connection
    evictions: int = 0  # consecutive evictions by another process
    failures: int = 0  # consecutive failed connections
    client: WebSocketClient | None = field(default=None, repr=False)


class LiveSource:
    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        metrics: Metrics,
        stop: asyncio.Event,
        agents: Sequence[AgentSpec],
    ) -> None:
        """``agents``: the topology, whose groups on the raw streams the backpressure gate watches."""
        assert settings.massive_api_key is not None
        self.settings = settings
        self.key = settings.massive_api_key.get_secret_value()
        self.redis = redis
        self.metrics = metrics
        self.stop = stop
        self.writer = RawWriter.of(settings, redis, metrics, "massive", Gate(redis, settings.max_backlog, agents))
        self.rest = RESTClient(api_key=self.key, base=settings.massive_rest_base, retries=0, read_timeout=30.0)
        self.spot: dict[str, float] = {}
        self.targets: dict[str, list[Target]] = {}
        self.targets_changed = asyncio.Event()
        self.configured = set(settings.underlyings)
        ws_format = RawFormat.WS_DELAYED if settings.massive_ws_feed.startswith("delayed.") else RawFormat.WS
        self.pump = FramePump(settings, redis, metrics, self.writer, stop, ws_format)
        self.connections: list[Connection] = []
        self.assignment = Assignment(MAX_QUOTES_PER_CONNECTION)
        self.option_slots = settings.ws_connections  # lowered when the plan allows fewer connections
        self.rng = random.Random()
        self._told: set[str] = set()  # problems already logged once

    def _once(self, key: str, level: int, msg: str, *args: Any) -> None:
        """Log a problem that repeats (an eviction, a plan without access) once; later at debug."""
        log.log(level if key not in self._told else logging.DEBUG, msg, *args)
        self._told.add(key)

    # --- REST ------------------------------------------------------------------------------

    def _fetch_chain(self, u: str) -> list[bytes]:
        """All pages of one filtered chain snapshot (blocking; run in a thread). ``next_url`` is
        followed as given: its cursor is opaque and carries the filter."""
        ticker = provider_index_ticker(u)
        params = chain_filter(self.spot.get(u), self.settings, dt.datetime.now(ET).date())
        pages = []
        while True:
            resp = self.rest.list_snapshot_options_chain(ticker, params=params, raw=True)
            body = resp.data
            pages.append(body)
            nxt = orjson.loads(body).get("next_url")
            if not nxt:
                return pages
            params = dict(parse_qsl(urlparse(nxt).query))

    def _fetch_indices(self, tickers: list[str]) -> bytes:
        resp = self.rest.get_snapshot_indices(ticker_any_of=tickers, raw=True)
        return resp.data  # type: ignore[no-any-return]

    async def poll_chain(self, u: str) -> None:
        interval = self.settings.chain_poll_min_s
        while not self.stop.is_set():
            t0 = time.monotonic()
            failed = False
            try:
                pages = await asyncio.to_thread(self._fetch_chain, u)
                rx = time.time_ns()
                await self.writer.write(u, [(RawFormat.REST_CHAIN, b"[" + b",".join(pages) + b"]")], rx)
                self._learn_spot(u, pages)
                capacity = self.option_slots * MAX_QUOTES_PER_CONNECTION
                targets = subscription_set(pages, u, self.spot.get(u), capacity)
                if targets != self.targets.get(u):
                    self.targets[u] = targets
                    self.targets_changed.set()
                self.metrics.chain_poll_duration.labels(u).observe(time.monotonic() - t0)
            except (RedisError, RedisClusterException) as exc:  # the writer retried for a minute first
                failed = True
                self.metrics.chain_poll_failures.labels(u, "redis").inc()
                self.metrics.dropped.labels("source.massive", "rest", "redis_unavailable").inc()
                log.error("chain poll of %s: Redis did not take the snapshot (%s); the next poll replaces it", u, exc)
            except BadResponse as exc:
                failed = True
                text = str(exc)
                if "NOT_AUTHORIZED" in text:
                    self.metrics.chain_poll_failures.labels(u, "not_authorized").inc()
                    self._once(
                        f"403:{u}", logging.ERROR,
                        "chain poll of %s: the API key's plan does not include this data (NOT_AUTHORIZED); "
                        "upgrade the plan or remove %s from MARKETSWARM_UNDERLYINGS: %s", u, u, text[:200],
                    )  # fmt: skip
                    interval = self.settings.chain_poll_max_s
                else:
                    self.metrics.chain_poll_failures.labels(u, "bad_response").inc()
                    log.error("chain poll of %s failed (bad_response): %s", u, text[:300])
            except (AuthError, OSError, ValueError) as exc:
                failed = True
                status = "auth" if isinstance(exc, AuthError) else "error"
                self.metrics.chain_poll_failures.labels(u, status).inc()
                log.error("chain poll of %s failed (%s): %s", u, status, str(exc)[:300])
            except Exception as exc:  # urllib3 MaxRetryError and friends: keep polling
                failed = True
                self.metrics.chain_poll_failures.labels(u, "error").inc()
                log.error("chain poll of %s failed: %r", u, exc)
            interval = next_interval(time.monotonic() - t0, failed, interval, self.settings)
            self.metrics.chain_poll_interval.labels(u).set(interval)
            await pause(self.stop, interval)

    def _learn_spot(self, u: str, pages: list[bytes]) -> None:
        """Spot for the next poll's strike filter (any recent value will do: it only centers a range)."""
        for body in pages:
            results = orjson.loads(body).get("results") or []
            for r in results[:1]:
                ua = r.get("underlying_asset") or {}
                v = ua.get("value", ua.get("price"))
                if isinstance(v, int | float) and v > 0:
                    self.spot[u] = float(v)
                    return

    async def seed_spots(self) -> None:
        """Index spots from the indices snapshot, so the first chain poll can filter strikes."""
        tickers = [
            provider_index_ticker(u)
            for u in self.settings.underlyings
            if provider_index_ticker(u).startswith(INDEX_PREFIX)
        ]
        if not tickers:
            return
        tickers.append(VOL_INDEX_TICKER)
        try:
            body = await asyncio.to_thread(self._fetch_indices, tickers)
        except Exception as exc:
            log.warning("indices snapshot failed: %r", exc)
            return
        rx = time.time_ns()
        for r in orjson.loads(body).get("results") or []:
            t = str(r.get("ticker", ""))
            u = t.removeprefix(INDEX_PREFIX)
            if u in self.configured and isinstance(r.get("value"), int | float):
                self.spot[u] = float(r["value"])
        for u in self.configured:
            try:
                await self.writer.write(u, [(RawFormat.REST_INDICES, body)], rx)
            except (RedisError, RedisClusterException) as exc:  # spot still comes from the indices feed
                self.metrics.dropped.labels("source.massive", "rest", "redis_unavailable").inc()
                log.error("indices snapshot for %s: Redis did not take it (%s); spot follows from the feed", u, exc)

    # --- WebSocket -------------------------------------------------------------------------

    async def on_frame(self, conn: Connection, frame: str | bytes) -> None:
        """The socket's read path: stamp and buffer, nothing else (never parse, never wait on Redis).
        A provider status saying this connection is over the plan's limit marks it evicted."""
        if _MAX_CONNECTIONS in frame if isinstance(frame, str) else _MAX_CONNECTIONS.encode() in frame:
            conn.evicted = True
        self.pump.put(frame)

    async def run_ws(self, conn: Connection) -> None:
        """Keep one connection up: (re)connect with its current subscriptions, back off between tries.
        Returns when stopped, or when the plan allows this process fewer connections (see module)."""
        while not self.stop.is_set():
            client = WebSocketClient(
                api_key=self.key,
                feed=self.settings.massive_ws_feed,
                market=conn.market,
                raw=True,
                secure=self.settings.massive_ws_secure,
                subscriptions=conn.subscriptions(),
                max_reconnects=0,  # every reconnect goes through the backoff below
            )
            conn.client, conn.evicted, conn.opened = client, False, time.monotonic()
            self.connections.append(conn)
            try:
                self.metrics.ws_connected.labels(conn.feed).set(1)
                await client.connect(lambda frame: self.on_frame(conn, frame))
                conn.failures = 0 if time.monotonic() - conn.opened > STABLE_CONNECTION_S else conn.failures + 1
            except AuthError as exc:
                self.metrics.ws_statuses.labels(conn.feed, "auth_failed").inc()
                self._once(
                    f"auth:{conn.feed}", logging.ERROR,
                    "%s: authentication failed (check MARKETSWARM_MASSIVE_API_KEY): %s", conn.feed, exc,
                )  # fmt: skip
                conn.failures = max(conn.failures + 1, 6)  # a wrong key does not fix itself quickly
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                lived = time.monotonic() - conn.opened
                conn.failures = 0 if lived > STABLE_CONNECTION_S else conn.failures + 1
                log.warning("%s: connection closed (%s) after %.0fs", conn.feed, code, lived)
            except Exception as exc:
                conn.failures += 1
                log.error("%s: connection failed: %r", conn.feed, exc)
            finally:
                self.metrics.ws_connected.labels(conn.feed).set(0)
                self.connections.remove(conn)
                conn.client = None
            if self.stop.is_set():
                return
            if conn.evicted and self._evicted(conn):
                return
            if time.monotonic() - conn.opened > STABLE_CONNECTION_S:
                conn.evictions = 0
            delay = reconnect_delay(conn.failures, conn.evictions, self.rng)
            self.metrics.ws_reconnects.labels(conn.feed).inc()
            log.info("%s: reconnecting in %.1fs", conn.feed, delay)
            await pause(self.stop, delay)

    def _evicted(self, conn: Connection) -> bool:
        """The provider evicted ``conn`` for the plan's connection limit. True when this process's own
        newer connection of the same market caused it: the connection is then given up for good."""
        self.metrics.ws_evictions.labels(conn.feed).inc()
        now = time.monotonic()
        ours = [
            c for c in self.connections
            if c.market == conn.market and c.opened > conn.opened and now - c.opened < SELF_EVICTION_WINDOW_S
        ]  # fmt: skip
        if ours and conn.market == "options" and self.option_slots > 1:
            self.option_slots -= 1
            self._once(
                f"evicted-self:{conn.feed}", logging.ERROR,
                "%s: the provider closed the oldest connection when this process opened another "
                "(max_connections): the API key's plan allows fewer connections than "
                "MARKETSWARM_WS_CONNECTIONS=%d. Running %d option connection(s); set "
                "MARKETSWARM_WS_CONNECTIONS=%d or raise the plan's limit.",
                conn.feed, self.settings.ws_connections, self.option_slots, self.option_slots,
            )  # fmt: skip
            self.targets_changed.set()
            return True
        conn.evictions += 1
        self._once(
            f"evicted:{conn.feed}", logging.ERROR,
            "%s: the provider closed this connection for the API key's connection limit "
            "(max_connections): another process is using the same key. Stop the other process or raise "
            "the plan's limit. Reconnecting with a growing delay (%.0fs up to %.0fs); further evictions "
            "are counted in marketswarm_ws_evictions_total.",
            conn.feed, EVICTED_BACKOFF_S, EVICTED_BACKOFF_MAX_S,
        )  # fmt: skip
        return False

    async def run(self) -> None:
        statuses = _StatusCounter(self.metrics)
        logging.getLogger("WebSocketClient").addHandler(statuses)
        try:
            await self._run()
        finally:
            logging.getLogger("WebSocketClient").removeHandler(statuses)

    async def _run(self) -> None:
        await self.seed_spots()
        tasks = [asyncio.create_task(self.poll_chain(u)) for u in self.settings.underlyings]
        tasks.append(asyncio.create_task(self.pump.write_frames()))
        indices = [
            f"V.{provider_index_ticker(u)}"
            for u in self.settings.underlyings
            if provider_index_ticker(u).startswith(INDEX_PREFIX)
        ]
        if indices:  # an indices plan: the volatility index too, every underlying's input
            indices.append(f"V.{VOL_INDEX_TICKER}")
            conn = Connection("massive.indices", "indices", 0, lambda: indices)
            tasks.append(asyncio.create_task(self.run_ws(conn)))
        tasks.append(asyncio.create_task(self._options_feeds()))
        await self.stop.wait()
        for c in list(self.connections):
            if c.client is not None:
                with contextlib.suppress(Exception):
                    await c.client.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _slot_channels(self, slot: int) -> list[str]:
        """A connection's channels now: ``Q`` (and ``T`` when targeted) per assigned contract; ``T.*``
        on the first connection with contracts in firehose mode."""
        contracts = self.assignment.slots.get(slot, set())
        subs = sorted(f"Q.{c}" for c in contracts)
        if self.settings.ws_mode == "firehose":
            first = min((i for i, c in self.assignment.slots.items() if c), default=None)
            return (["T.*"] if slot == first else []) + subs
        return subs + sorted(f"T.{c}" for c in contracts)

    async def _options_feeds(self) -> None:
        """Keep the option connections subscribed to the wanted contracts: on every change of the
        targets, at every expiry close among them, and when a connection is given up."""
        running: dict[int, asyncio.Task[None]] = {}
        try:
            while not self.stop.is_set():
                now = time.time_ns()
                close = next_close(self.targets, now)
                wait = None if close is None else max(0.0, (close - now) / 1e9) + 0.01
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await asyncio.wait_for(self.targets_changed.wait(), wait)
                self.targets_changed.clear()
                for slot in [s for s, t in running.items() if t.done()]:
                    del running[slot]  # given up (the plan allows fewer connections)
                alive = sorted(running)[: self.option_slots]
                for extra in sorted(running)[self.option_slots :]:  # more than the plan allows
                    running.pop(extra).cancel()
                fresh = (i for i in itertools.count() if i not in running and i not in alive)
                slots = alive + [next(fresh) for _ in range(self.option_slots - len(alive))]
                capacity = len(slots) * MAX_QUOTES_PER_CONNECTION
                plan = self.assignment.assign(wanted(self.targets, time.time_ns(), capacity), slots)
                self.metrics.ws_subscriptions.labels("massive.options").set(sum(len(c) for c in plan.values()))
                for slot, subs in plan.items():
                    task = running.get(slot)
                    if not subs:
                        if task is not None:
                            task.cancel()
                            del running[slot]
                    elif task is None:
                        conn = Connection("massive.options", "options", slot, partial(self._slot_channels, slot))
                        running[slot] = asyncio.create_task(self.run_ws(conn))
                    else:
                        self._resubscribe(slot, self._slot_channels(slot))
        finally:
            for t in running.values():
                t.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)

    def _resubscribe(self, slot: int, channels: list[str]) -> None:
        """Change a running connection's subscriptions by difference (the client sends both lists)."""
        for conn in self.connections:
            if conn.market == "options" and conn.slot == slot and conn.client is not None:
                client, want = conn.client, set(channels)
                client.unsubscribe(*(client.scheduled_subs - want))
                client.subscribe(*(want - client.scheduled_subs))


class _StatusCounter(logging.Handler):
    """The client logs the provider's non-OK statuses (max_connections, slow_consumer, ...): count them."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(logging.WARNING)
        self.metrics = metrics

    def emit(self, record: logging.LogRecord) -> None:
        m = _STATUS_LOG.match(record.getMessage())
        if m:
            status = m.group(1)
            self.metrics.ws_statuses.labels("massive", status).inc(int(m.group(4) or 1))
            log.error("provider status %s: %s", status, m.group(2))


async def run_live(
    settings: Settings, redis: aioredis.Redis, metrics: Metrics, stop: asyncio.Event, agents: Sequence[AgentSpec]
) -> None:
    await LiveSource(settings, redis, metrics, stop, agents).run()
