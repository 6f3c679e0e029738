"""The official massive client against the loopback fake provider: REST chain polls and the WebSocket,
through the raw streams and normalize into typed events, including after a dropped connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from marketswarm.agents.normalize import NORMALIZE
from marketswarm.agents.sources.fake_provider import FakeProvider
from marketswarm.agents.sources.live import LiveSource, chain_filter, next_interval
from marketswarm.agents.sources.simulated import SimMarket
from marketswarm.schemas import codec
from marketswarm.schemas.events import ChainSnapshot, Quote, Spot, Trade
from marketswarm.topology import streams
from marketswarm.topology.connections import create_redis
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.runtime import Runtime
from marketswarm.topology.settings import Settings

pytestmark = pytest.mark.integration


def sim_results(n_strikes: int = 40) -> list[dict[str, Any]]:
    m = SimMarket("SPX", 1, 0, time.time_ns())
    page = orjson.loads(m.chain_frame())[0]
    return page["results"]  # type: ignore[no-any-return]


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    fake = FakeProvider(chains={"I:SPX": sim_results()}, indices={"I:SPX": 5900.0})
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def live_settings(fake: FakeProvider, url: str, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "redis_url": url,
        "underlyings": ["SPX"],
        "massive_api_key": SecretStr(fake.api_key),
        "massive_rest_base": fake.rest_base,
        "massive_ws_feed": fake.ws_feed,
        "massive_ws_secure": False,
        "chain_poll_min_s": 0.2,
        "chain_poll_max_s": 1.0,
        "block_ms": 50,
    }
    base.update(kw)
    return Settings(**base)


async def wait_for(cond: Any, timeout: float = 15.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def events_of(url: str, st: Settings) -> list[Any]:
    client = create_redis(url, st.block_ms)
    await Runtime(NORMALIZE, st, client, Metrics(CollectorRegistry())).run(idle_timeout_s=0.7)
    out = []
    for _, fields in await client.xrange(streams.EVENTS.key("SPX")):
        out.extend(codec.decode(streams.Payload.EVENTS, fields).events)
    await client.aclose()
    return out


async def test_live_source_end_to_end_with_a_dropped_connection(
    provider: FakeProvider, redis_url: str, aredis: aioredis.Redis
) -> None:
    st = live_settings(provider, redis_url)
    stop = asyncio.Event()
    metrics = Metrics(CollectorRegistry())
    source = LiveSource(st, aredis, metrics, stop)
    task = asyncio.create_task(source.run())
    try:
        await wait_for(lambda: provider.connected("options") >= 1 and provider.connected("indices") >= 1)
        await wait_for(lambda: any(m == "options" and "Q.O:SPXW" in p for m, p in provider.subscriptions))
        sym = source.targets["SPX"][0]
        now_ms = time.time_ns() // 1_000_000
        await provider.broadcast("options", [
            {"ev": "Q", "sym": sym, "bx": 1, "ax": 1, "bp": 10.0, "ap": 10.5, "bs": 5, "as": 7, "t": now_ms, "q": 1},
            {"ev": "T", "sym": sym, "x": 1, "p": 10.2, "s": 3, "c": [209], "t": now_ms, "q": 2},
            {"ev": "Q", "sym": "O:AAPL251219C00150000", "bp": 1.0, "ap": 1.1, "t": now_ms, "q": 3},
        ])  # fmt: skip
        await provider.broadcast("indices", [{"ev": "V", "val": 5901.25, "T": "I:SPX", "t": now_ms}])
        await asyncio.sleep(0.5)
        await provider.drop_all()  # the network fails mid-stream
        await wait_for(lambda: provider.connected("options") >= 1, timeout=20)
        await asyncio.sleep(1.5)  # resubscribed
        await provider.broadcast(
            "options", [{"ev": "Q", "sym": sym, "bp": 11.0, "ap": 11.5, "bs": 1, "as": 1, "t": now_ms + 5, "q": 4}]
        )
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    events = await events_of(redis_url, st)
    chains = [e for e in events if isinstance(e, ChainSnapshot)]
    assert chains and len(chains[0].contracts) > 100 and chains[0].spot == pytest.approx(5900, abs=50)
    occ = sym.removeprefix("O:")
    quotes = [e for e in events if isinstance(e, Quote)]
    assert [(q.symbol, q.bid, q.ask, q.seq) for q in quotes] == [(occ, 10.0, 10.5, 1), (occ, 11.0, 11.5, 4)]
    assert [(t.symbol, t.px, t.size) for t in events if isinstance(t, Trade)] == [(occ, 10.2, 3)]
    assert Spot(underlying="SPX", value=5901.25, ts_ns=now_ms * 1_000_000) in events
    assert any(isinstance(e, Spot) and e.value == 5900.0 for e in events)  # the indices snapshot
    assert metrics.dropped.labels("source.massive", "ws", "unconfigured_underlying")._value.get() == 1
    # The chain poller filtered by spot and expiry, paginated, and subscribed at most 1,000 quotes.
    assert any("strike_price.gte" in r and "expiration_date.lte" in r for r in provider.requests)
    assert any("cursor=" in r for r in provider.requests)
    subs = [p for m, p in provider.subscriptions if m == "options"]
    assert all(sum(1 for s in p.split(",") if s.startswith("Q.")) <= 1000 for s in [subs] for p in s)


async def test_auth_failure_and_max_connections_surface(
    provider: FakeProvider, redis_url: str, aredis: aioredis.Redis
) -> None:
    provider.max_connections = 0
    st = live_settings(provider, redis_url)
    stop = asyncio.Event()
    metrics = Metrics(CollectorRegistry())
    task = asyncio.create_task(LiveSource(st, aredis, metrics, stop).run())
    await wait_for(lambda: metrics.ws_statuses.labels("massive", "max_connections")._value.get() >= 1, timeout=20)
    stop.set()
    await asyncio.wait_for(task, 10)
    provider.max_connections = 4
    bad = live_settings(provider, redis_url, massive_api_key=SecretStr("wrong"))
    stop = asyncio.Event()
    metrics = Metrics(CollectorRegistry())
    task = asyncio.create_task(LiveSource(bad, aredis, metrics, stop).run())
    await wait_for(lambda: metrics.ws_statuses.labels("massive.indices", "auth_failed")._value.get() >= 1, timeout=20)
    await wait_for(lambda: metrics.chain_poll_failures.labels("SPX", "bad_response")._value.get() >= 1, timeout=20)
    stop.set()
    await asyncio.wait_for(task, 10)


def test_cadence_and_filters() -> None:
    import datetime as dt

    st = Settings(chain_poll_min_s=2, chain_poll_max_s=60, chain_range_pct=5, chain_expiry_days=3)
    assert next_interval(0.1, False, 2, st) == 2  # fast polls are bounded below
    assert next_interval(3.0, False, 2, st) == 12  # a multiple of the measured latency
    assert next_interval(0.1, True, 12, st) == 24  # failures back off
    assert next_interval(0.1, True, 50, st) == 60  # up to the maximum
    f = chain_filter(5000.0, st, dt.date(2025, 1, 6))
    assert f["strike_price.gte"] == 4750 and f["strike_price.lte"] == 5250
    assert f["expiration_date.gte"] == "2025-01-06" and f["expiration_date.lte"] == "2025-01-09"
