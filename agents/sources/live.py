"""The live Massive source, through the official ``massive`` client: a chain poller and WebSocket feeds.

Chain poller (per underlying): REST option-chain snapshot (``/v3/snapshot/options/I:SPX`` for
indices), all pages, filtered to the strikes within ``chain_range_pct`` of spot and the expiries of
the next ``chain_expiry_days`` days (0DTE first). One poll is one raw frame (the pages' exact bytes
in a JSON array). Its cadence follows its own measured latency (``CADENCE_FACTOR`` x the last poll,
bounded by ``chain_poll_min_s``/``chain_poll_max_s``); polls never overlap, and a failed poll
(429/5xx/network) doubles the interval up to the maximum. The poll also chooses the contracts the
WebSocket subscribes to: the nearest to the money first, at most 1,000 quote contracts per
connection as the provider allows.

WebSocket: options ``T`` and ``Q`` and index ``V``. Mode ``targeted`` subscribes ``T`` and ``Q`` for
the poller's set; mode ``firehose`` subscribes ``T.*`` (every option trade; other underlyings are
dropped at the edge) plus targeted ``Q``. The socket's read path only appends the frame to a bounded
buffer (the provider disconnects slow consumers); a writer task routes frames by underlying and
writes them in pipelined batches. The client reconnects and resubscribes; we back off and restart it
when it gives up. ``auth_failed`` and ``max_connections`` are logged as errors and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlparse

import orjson
import redis.asyncio as aioredis
from massive import RESTClient, WebSocketClient
from massive.exceptions import AuthError, BadResponse

from marketswarm.agents.calc.blackscholes import ET
from marketswarm.agents.normalize import REST_CHAIN, REST_INDICES, WS
from marketswarm.agents.parsing import RejectReason, excerpt
from marketswarm.agents.sources.writer import RawWriter
from marketswarm.schemas import codec
from marketswarm.schemas.models import Reject
from marketswarm.schemas.occ import INDEX_PREFIX, PROVIDER_PREFIX, SymbolError, parse_occ, provider_index_ticker
from marketswarm.topology import streams
from marketswarm.topology.backpressure import Gate
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.settings import Settings

log = logging.getLogger(__name__)

CADENCE_FACTOR = 4.0  # wait this many times the last poll's latency before the next one
MAX_QUOTES_PER_CONNECTION = 1000  # the provider's limit for options Q subscriptions
WRITE_BATCH_FRAMES = 200
WS_RESTART_BACKOFF_S = 1.0
WS_RESTART_BACKOFF_MAX_S = 60.0
_STATUS_LOG = re.compile(r"server (\w+): (.*?)( \(x(\d+)\))?$")


def chain_filter(spot: float | None, settings: Settings, today: dt.date) -> dict[str, Any]:
    """Query parameters of a filtered chain poll: ATM strike range and relevant expiries."""
    params: dict[str, Any] = {
        "limit": 250,
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


def subscription_set(pages: Sequence[bytes], spot: float | None, limit: int) -> list[str]:
    """The contracts to subscribe to: nearest expiry first, then nearest to the money."""
    contracts = []
    for body in pages:
        for r in orjson.loads(body).get("results", []):
            d = r.get("details") or {}
            if "ticker" in d:
                contracts.append(
                    (d.get("expiration_date", ""), abs(float(d.get("strike_price", 0)) - (spot or 0)), d["ticker"])
                )
    contracts.sort()
    return [t for _, _, t in contracts[:limit]]


class LiveSource:
    def __init__(self, settings: Settings, redis: aioredis.Redis, metrics: Metrics, stop: asyncio.Event) -> None:
        assert settings.massive_api_key is not None
        self.settings = settings
        self.key = settings.massive_api_key.get_secret_value()
        self.redis = redis
        self.metrics = metrics
        self.stop = stop
        self.writer = RawWriter.of(settings, redis, metrics, "massive", Gate(redis, settings.max_backlog))
        self.rest = RESTClient(api_key=self.key, base=settings.massive_rest_base, retries=0, read_timeout=30.0)
        self.spot: dict[str, float] = {}
        self.targets: dict[str, list[str]] = {}
        self.targets_changed = asyncio.Event()
        self.buffer: asyncio.Queue[tuple[int, str]] = asyncio.Queue(settings.ws_buffer_frames)
        self.configured = set(settings.underlyings)
        self._clients: list[WebSocketClient] = []

    # --- REST ------------------------------------------------------------------------------

    def _fetch_chain(self, u: str) -> list[bytes]:
        """All pages of one filtered chain snapshot (blocking; run in a thread)."""
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
                await self.writer.write(u, [(REST_CHAIN, b"[" + b",".join(pages) + b"]")], rx)
                self._learn_spot(u, pages)
                targets = subscription_set(
                    pages, self.spot.get(u), self.settings.ws_connections * MAX_QUOTES_PER_CONNECTION
                )
                if targets != self.targets.get(u):
                    self.targets[u] = targets
                    self.targets_changed.set()
                self.metrics.chain_poll_duration.labels(u).observe(time.monotonic() - t0)
            except (BadResponse, AuthError, OSError, ValueError) as exc:
                failed = True
                status = (
                    "auth"
                    if isinstance(exc, AuthError)
                    else "bad_response"
                    if isinstance(exc, BadResponse)
                    else "error"
                )
                self.metrics.chain_poll_failures.labels(u, status).inc()
                log.error("chain poll of %s failed (%s): %s", u, status, str(exc)[:300])
            except Exception as exc:  # urllib3 MaxRetryError and friends: keep polling
                failed = True
                self.metrics.chain_poll_failures.labels(u, "error").inc()
                log.error("chain poll of %s failed: %r", u, exc)
            interval = next_interval(time.monotonic() - t0, failed, interval, self.settings)
            self.metrics.chain_poll_interval.labels(u).set(interval)
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), interval)

    def _learn_spot(self, u: str, pages: list[bytes]) -> None:
        for body in pages:
            for r in orjson.loads(body).get("results", [])[:1]:
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
        try:
            body = await asyncio.to_thread(self._fetch_indices, tickers)
        except Exception as exc:
            log.warning("indices snapshot failed: %r", exc)
            return
        rx = time.time_ns()
        for r in orjson.loads(body).get("results", []):
            t = str(r.get("ticker", ""))
            u = t.removeprefix(INDEX_PREFIX)
            if u in self.configured and isinstance(r.get("value"), int | float):
                self.spot[u] = float(r["value"])
        for u in self.configured:
            await self.writer.write(u, [(REST_INDICES, body)], rx)

    # --- WebSocket -------------------------------------------------------------------------

    async def on_frame(self, frame: str | bytes) -> None:
        """The socket's read path: stamp and buffer, nothing else (never parse, never wait on Redis)."""
        try:
            self.buffer.put_nowait(
                (time.time_ns(), frame if isinstance(frame, str) else frame.decode("utf-8", "replace"))
            )
        except asyncio.QueueFull:
            self.metrics.dropped.labels("source.massive", "ws", "buffer_full").inc()
        self.metrics.ws_buffer_depth.labels("massive").set(self.buffer.qsize())

    def route(self, data: bytes) -> tuple[dict[str, bytes], list[str]]:
        """Split a frame by underlying (exact bytes when one underlying has it all); statuses seen."""
        elements = orjson.loads(data)
        if not isinstance(elements, list):
            raise ValueError("frame is not a list")
        groups: dict[str, list[Any]] = {}
        statuses = []
        for el in elements:
            u = None
            if isinstance(el, dict):
                ev = el.get("ev")
                if ev == "status":
                    statuses.append(str(el.get("status")))
                    continue
                sym = el.get("sym") or el.get("T")
                if isinstance(sym, str):
                    if sym.startswith(PROVIDER_PREFIX):
                        with contextlib.suppress(SymbolError):
                            u = parse_occ(sym).underlying
                    elif sym.startswith(INDEX_PREFIX):
                        u = sym[len(INDEX_PREFIX) :]
            if u is None:
                u = "?"
            if u != "?" and u not in self.configured:
                self.metrics.dropped.labels("source.massive", "ws", "unconfigured_underlying").inc()
                continue
            groups.setdefault(u, []).append(el)
        if "?" in groups:  # elements we cannot attribute go to every stream, where normalize rejects them
            odd = groups.pop("?")
            for u in groups or {next(iter(self.configured)): []}:
                groups.setdefault(u, []).extend(odd)
        if len(groups) == 1 and sum(len(g) for g in groups.values()) == len(elements):
            return {next(iter(groups)): data}, statuses
        return {u: orjson.dumps(els) for u, els in groups.items()}, statuses

    async def write_frames(self) -> None:
        """Drain the buffer in pipelined batches (off the socket's read path)."""
        edge = streams.REJECTS.key(streams.EDGE)
        while not self.stop.is_set():
            try:
                first = await asyncio.wait_for(self.buffer.get(), 0.5)
            except TimeoutError:
                continue
            batch = [first]
            while len(batch) < WRITE_BATCH_FRAMES and not self.buffer.empty():
                batch.append(self.buffer.get_nowait())
            self.metrics.ws_buffer_depth.labels("massive").set(self.buffer.qsize())
            per_u: dict[str, list[tuple[str, bytes]]] = {}
            rx = batch[-1][0]
            for rx_i, text in batch:
                data = text.encode()
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
                    await self.redis.xadd(
                        edge, codec.encode_reject(reject), maxlen=streams.REJECTS_MAXLEN, approximate=True
                    )
                    self.metrics.rejects.labels("source.massive", edge, RejectReason.MALFORMED_JSON).inc()
                    continue
                for s in statuses:
                    self.metrics.ws_statuses.labels("massive", s).inc()
                for u, payload in routed.items():
                    per_u.setdefault(u, []).append((WS, payload))
            for u, frames in per_u.items():
                await self.writer.write(u, frames, rx)

    async def run_ws(self, market: str, subscriptions: list[str]) -> None:
        feed = f"massive.{market}"
        backoff = WS_RESTART_BACKOFF_S
        while not self.stop.is_set():
            client = WebSocketClient(
                api_key=self.key,
                feed=self.settings.massive_ws_feed,
                market=market,
                raw=True,
                secure=self.settings.massive_ws_secure,
                subscriptions=subscriptions,
                max_reconnects=5,
            )
            self._clients.append(client)
            started = time.monotonic()
            try:
                self.metrics.ws_connected.labels(feed).set(1)
                await client.connect(self.on_frame)
            except AuthError as exc:
                self.metrics.ws_statuses.labels(feed, "auth_failed").inc()
                log.error("%s: authentication failed: %s", feed, exc)
                backoff = WS_RESTART_BACKOFF_MAX_S
            except Exception as exc:
                log.error("%s: connection failed: %r", feed, exc)
            finally:
                self.metrics.ws_connected.labels(feed).set(0)
                self._clients.remove(client)
            if self.stop.is_set():
                return
            if time.monotonic() - started > WS_RESTART_BACKOFF_MAX_S:
                backoff = WS_RESTART_BACKOFF_S
            self.metrics.ws_reconnects.labels(feed).inc()
            log.warning("%s: restarting in %.0fs", feed, backoff)
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), backoff)
            backoff = min(backoff * 2, WS_RESTART_BACKOFF_MAX_S)

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
        tasks.append(asyncio.create_task(self.write_frames()))
        indices = [
            f"V.{provider_index_ticker(u)}"
            for u in self.settings.underlyings
            if provider_index_ticker(u).startswith(INDEX_PREFIX)
        ]
        if indices:
            tasks.append(asyncio.create_task(self.run_ws("indices", indices)))
        tasks.append(asyncio.create_task(self._options_feeds()))
        await self.stop.wait()
        for c in list(self._clients):
            with contextlib.suppress(Exception):
                await c.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _options_feeds(self) -> None:
        """(Re)start the option connections whenever the poller's contract set changes."""
        running: list[asyncio.Task[None]] = []
        try:
            while not self.stop.is_set():
                await self.targets_changed.wait()
                self.targets_changed.clear()
                contracts = sorted({c for ts in self.targets.values() for c in ts})
                per = MAX_QUOTES_PER_CONNECTION
                chunks = [contracts[i : i + per] for i in range(0, len(contracts), per)][: self.settings.ws_connections]
                if self._subscriptions_apply(chunks):
                    continue
                for t in running:
                    t.cancel()
                await asyncio.gather(*running, return_exceptions=True)
                running = []
                for i, chunk in enumerate(chunks):
                    subs = [f"Q.{c}" for c in chunk]
                    if self.settings.ws_mode == "firehose":
                        subs = (["T.*"] if i == 0 else []) + subs
                    else:
                        subs += [f"T.{c}" for c in chunk]
                    running.append(asyncio.create_task(self.run_ws("options", subs)))
        finally:
            for t in running:
                t.cancel()

    def _subscriptions_apply(self, chunks: list[list[str]]) -> bool:
        """Change the subscriptions of running connections in place (the client resubscribes)."""
        options = [c for c in self._clients if c.market_value == "options"]
        if len(options) != len(chunks) or not options:
            return False
        for client, chunk in zip(options, chunks, strict=True):
            subs = {f"Q.{c}" for c in chunk}
            subs |= (
                {"T.*"} if self.settings.ws_mode == "firehose" and client is options[0] else {f"T.{c}" for c in chunk}
            )
            client.unsubscribe(*(client.scheduled_subs - subs))
            client.subscribe(*(subs - client.scheduled_subs))
        return True


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


async def run_live(settings: Settings, redis: aioredis.Redis, metrics: Metrics, stop: asyncio.Event) -> None:
    await LiveSource(settings, redis, metrics, stop).run()
