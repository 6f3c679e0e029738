"""The official massive client against the loopback fake provider: REST chain polls and the WebSocket,
through the raw streams and normalize into typed events, including after a dropped connection; the
provider's connection limit (eviction of the oldest), subscriptions by difference and at the close,
a plan without access, and the fake's own protocol (auth timeout, page limit, opaque cursor)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from marketswarm.agents import catalog
from marketswarm.agents.normalize.normalizer import NORMALIZE
from marketswarm.agents.sources import live
from marketswarm.agents.sources.live import LiveSource, chain_filter, next_interval
from marketswarm.agents.sources.simulated import SimMarket
from marketswarm.agents.sources.subscriptions import Target
from marketswarm.ops.embedded import EmbeddedServer, free_port
from marketswarm.ops.supervisor import Supervisor
from marketswarm.schemas import codec
from marketswarm.schemas.codec import RawFormat
from marketswarm.schemas.events import ChainSnapshot, Quote, Spot, Trade
from marketswarm.topology import streams
from marketswarm.topology.connections import create_redis
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.runtime import Runtime
from marketswarm.topology.settings import Settings
from tests.integration.test_dashboard import marketswarm_run
from tests.rig.fake_provider import FakeProvider, provider_shapes

pytestmark = pytest.mark.integration


def sim_results(n_strikes: int = 40) -> list[dict[str, Any]]:
    m = SimMarket("SPX", 1, 0, time.time_ns())
    page = orjson.loads(m.chain_frame())[0]
    return page["results"]  # type: ignore[no-any-return]


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    fake = FakeProvider(chains={"I:SPX": provider_shapes(sim_results(), time.time_ns())}, indices={"I:SPX": 5900.0})
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
    source = LiveSource(st, aredis, metrics, stop, catalog.agents())
    task = asyncio.create_task(source.run())
    try:
        await wait_for(lambda: provider.connected("options") >= 1 and provider.connected("indices") >= 1)
        await wait_for(lambda: any(m == "options" and "Q.O:SPXW" in p for m, p in provider.subscriptions))
        sym = source.targets["SPX"][0].ticker
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
    # The provider's shapes came through: empty greeks, quotes without a time, last trades.
    cs = chains[0].contracts
    assert any(c.gamma is None for c in cs) and any(c.quote_ts_ns is None for c in cs)
    assert any(c.last is not None and c.trade_conditions == (209,) for c in cs)
    assert chains[0].spot_ts_ns is not None and not chains[0].delayed
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


async def run_source(st: Settings, aredis: aioredis.Redis) -> tuple[LiveSource, asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    source = LiveSource(st, aredis, Metrics(CollectorRegistry()), stop, catalog.agents())
    return source, stop, asyncio.create_task(source.run())


async def test_an_eviction_by_another_process_is_logged_once_and_never_flaps(
    provider: FakeProvider, redis_url: str, aredis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    provider.max_connections = 1
    st = live_settings(provider, redis_url)
    a, stop_a, task_a = await run_source(st, aredis)
    await wait_for(lambda: provider.connected("options") == 1 and provider.connected("indices") == 1)
    b, stop_b, task_b = await run_source(st, aredis)  # another process on the same key
    try:

        def evictions(src: LiveSource) -> float:
            return sum(src.metrics.ws_evictions.labels(f)._value.get() for f in ("massive.options", "massive.indices"))

        await wait_for(lambda: evictions(a) == 2)  # the provider evicted the oldest of each market
        opened = provider.connections_opened
        await asyncio.sleep(4)
        # No storm: the evicted process waits (at least EVICTED_BACKOFF_S) instead of evicting back.
        assert provider.connections_opened == opened and provider.evictions == 2
        assert provider.connected("options") == provider.connected("indices") == 1
        assert a.metrics.ws_statuses.labels("massive", "max_connections")._value.get() == 2
        told = [r for r in caplog.records if "another process is using the same key" in r.getMessage()]
        assert len(told) == 2 and all(r.levelname == "ERROR" for r in told)  # once per feed
    finally:
        stop_a.set()
        stop_b.set()
        await asyncio.wait_for(asyncio.gather(task_a, task_b), 10)


async def test_own_connections_over_the_plan_shrink_to_it(
    provider: FakeProvider, redis_url: str, aredis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "MAX_QUOTES_PER_CONNECTION", 40)  # two connections' worth of contracts
    provider.max_connections = 1
    source, stop, task = await run_source(live_settings(provider, redis_url, ws_connections=2), aredis)
    try:
        await wait_for(lambda: source.option_slots == 1, timeout=20)
        await asyncio.sleep(3)
        evictions = provider.evictions
        await asyncio.sleep(3)
        assert provider.evictions == evictions and provider.connected("options") == 1  # settled, no flapping
        assert source.metrics.ws_subscriptions.labels("massive.options")._value.get() == 40
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_subscriptions_change_by_difference_and_drop_at_the_close(
    provider: FakeProvider, redis_url: str, aredis: aioredis.Redis
) -> None:
    source, stop, task = await run_source(
        live_settings(provider, redis_url, chain_poll_min_s=30, chain_poll_max_s=60), aredis
    )
    try:
        await wait_for(lambda: any(a == "subscribe" and "Q.O:SPXW" in p for _, a, p in provider.actions))
        await asyncio.sleep(1.5)
        before = len(provider.actions)
        # Two contracts close one second from now (as today's expiry does at 16:00 ET).
        soon = time.time_ns() + 1_000_000_000
        closing = [Target(t.ticker, soon, 0.0) for t in source.targets["SPX"][:2]]
        source.targets["SPX"] = closing + source.targets["SPX"][2:]
        source.targets_changed.set()
        await wait_for(lambda: any(a == "unsubscribe" for _, a, _ in provider.actions[before:]), timeout=10)
        changes = [(a, p) for m, a, p in provider.actions[before:] if m == "options"]
        assert [a for a, _ in changes] == ["unsubscribe"]  # only the difference, nothing re-subscribed
        gone = set(changes[0][1].split(","))
        assert gone == {f"{ch}.{t.ticker}" for t in closing for ch in ("Q", "T")}
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_auth_failure_and_a_plan_without_access_surface(
    provider: FakeProvider, redis_url: str, aredis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    provider.not_authorized = {"I:SPX"}
    source, stop, task = await run_source(live_settings(provider, redis_url, chain_poll_max_s=0.3), aredis)
    await wait_for(lambda: source.metrics.chain_poll_failures.labels("SPX", "not_authorized")._value.get() >= 2)
    stop.set()
    await asyncio.wait_for(task, 10)
    told = [r for r in caplog.records if "does not include this data" in r.getMessage() and r.levelname == "ERROR"]
    assert len(told) == 1
    provider.not_authorized = set()
    bad = live_settings(provider, redis_url, massive_api_key=SecretStr("wrong"))
    source, stop, task = await run_source(bad, aredis)
    await wait_for(lambda: source.metrics.ws_statuses.labels("massive.indices", "auth_failed")._value.get() >= 1)
    await wait_for(lambda: source.metrics.chain_poll_failures.labels("SPX", "bad_response")._value.get() >= 1)
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_delayed_data_is_carried_as_delayed(
    provider: FakeProvider, redis_url: str, aredis: aioredis.Redis
) -> None:
    provider.timeframe = "DELAYED"
    st = live_settings(provider, redis_url)
    source, stop, task = await run_source(st, aredis)
    await wait_for(lambda: source.metrics.chain_poll_duration.labels("SPX")._sum.get() > 0)
    stop.set()
    await asyncio.wait_for(task, 10)
    events = await events_of(redis_url, st)
    [chain, *_] = [e for e in events if isinstance(e, ChainSnapshot)]
    assert chain.delayed and chain.spot_delayed
    assert any(isinstance(e, Spot) and e.delayed and not e.rx_time for e in events)  # the indices snapshot


async def test_the_fake_speaks_the_provider_protocol(provider: FakeProvider) -> None:
    import websockets
    from massive import RESTClient
    from massive.exceptions import BadResponse

    provider.auth_timeout_s = 0.3
    async with websockets.connect(f"ws://{provider.ws_feed}/options") as ws:
        assert orjson.loads(await ws.recv())[0]["status"] == "connected"
        assert orjson.loads(await ws.recv())[0]["status"] == "auth_timeout"
    rest = RESTClient(api_key=provider.api_key, base=provider.rest_base, retries=0)
    with pytest.raises(BadResponse, match="Limit must be less than or equal to 250"):
        await asyncio.to_thread(rest.list_snapshot_options_chain, "I:SPX", params={"limit": 1000}, raw=True)
    n = len(provider.chains["I:SPX"])
    first = orjson.loads(
        (await asyncio.to_thread(rest.list_snapshot_options_chain, "I:SPX", params={"limit": 250}, raw=True)).data
    )
    assert len(first["results"]) == min(n, 250) and set(first["next_url"].split("?")[1].split("=")[0:1]) == {"cursor"}
    provider.chains["I:SPX"] = provider.chains["I:SPX"][:10]
    full = orjson.loads(
        (await asyncio.to_thread(rest.list_snapshot_options_chain, "I:SPX", params={"limit": 10}, raw=True)).data
    )
    assert len(full["results"]) == 10 and "next_url" in full  # a full page always has a next page
    last = orjson.loads(
        (
            await asyncio.to_thread(
                rest.list_snapshot_options_chain,
                "I:SPX",
                params={"cursor": full["next_url"].split("cursor=")[1]},
                raw=True,
            )
        ).data
    )
    assert "results" not in last and "next_url" not in last  # the empty last page omits results


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


def test_run_restarts_its_embedded_server_on_the_same_port(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path, record=False)
    url = server.start()
    sup = Supervisor({}, grace_s=1.0, server=server)
    runner = threading.Thread(target=sup.supervise)  # run() without its signal handlers
    runner.start()
    try:
        assert server.proc is not None
        server.proc.kill()
        deadline = time.monotonic() + 20
        while sup.server_restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sup.server_restarts == 1
        assert redis.Redis.from_url(url).ping()  # the same URL works again
    finally:
        sup.stopping.set()
        runner.join(10)
        server.stop()


def raw_seqs(url: str) -> list[int]:
    """The sequence numbers of the option quotes in the raw stream, in stream order."""
    client = redis.Redis.from_url(url)
    try:
        seqs = []
        for _, fields in client.xrange(streams.RAW.key("SPX")):
            frame = codec.decode(streams.Payload.RAW, fields)
            if frame.src == RawFormat.WS:
                seqs.extend(el["q"] for el in orjson.loads(frame.data) if el.get("ev") == "Q")
        return seqs
    finally:
        client.close()


async def test_the_live_source_resumes_writing_after_a_redis_outage(provider: FakeProvider, tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path, appendonly=False, record=False)
    url = server.start()
    st = live_settings(provider, url)
    client = create_redis(url, st.block_ms)
    metrics = Metrics(CollectorRegistry())
    stop = asyncio.Event()
    source = LiveSource(st, client, metrics, stop, catalog.agents())
    task = asyncio.create_task(source.run())

    async def quotes(seqs: range) -> None:
        now_ms = time.time_ns() // 1_000_000
        frame = [{"ev": "Q", "sym": sym, "bp": 10.0, "ap": 10.5, "bs": 1, "as": 1, "t": now_ms, "q": q} for q in seqs]
        await provider.broadcast("options", frame)

    try:
        await wait_for(lambda: any(m == "options" and "Q.O:SPXW" in p for m, p in provider.subscriptions))
        sym = source.targets["SPX"][0].ticker
        await quotes(range(1, 2))
        await wait_for(lambda: raw_seqs(url) == [1])
        assert server.proc is not None
        server.proc.kill()  # the server dies (no persistence: it comes back empty)
        server.proc.wait(10)
        for q in range(2, 7):  # received while Redis is down: held, not dropped
            await quotes(range(q, q + 1))
            await asyncio.sleep(0.2)
        await wait_for(lambda: metrics.source_write_blocked.labels("massive")._value.get() == 1)
        await asyncio.to_thread(server.restart)
        await quotes(range(7, 13))
        await wait_for(lambda: raw_seqs(url) == list(range(2, 13)), timeout=30)
        await wait_for(lambda: metrics.source_write_blocked.labels("massive")._value.get() == 0)
        errors = [
            s.value for f in metrics.registry.collect() if f.name == "marketswarm_redis_errors" for s in f.samples
        ]
        assert sum(errors) >= 1
        assert metrics.dropped.labels("source.massive", "ws", "buffer_full")._value.get() == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await client.aclose()
        server.stop()


@pytest.mark.timeout(240)
def test_run_keeps_publishing_after_its_embedded_server_is_killed(tmp_path: Path) -> None:
    """The whole of `marketswarm run` on its embedded server: SIGKILL the server; it comes back on
    the same port with its append-only file, and the source, agents and gateway carry on by themselves."""
    port = free_port()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "MARKETSWARM_REDIS_URL"}
    env |= {
        "MARKETSWARM_GATEWAY_PORT": str(port),
        "MARKETSWARM_DATA_DIR": str(data),
        "MARKETSWARM_UNDERLYINGS": "SPX",
        "MARKETSWARM_SIM_RATE": "500",
        "MARKETSWARM_LOG_LEVEL": "WARNING",
    }
    model = f"http://127.0.0.1:{port}/api/gex/SPX"

    def version(timeout_s: float, above: int = 0) -> int:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                r = httpx.get(model, timeout=2)
                if r.status_code == 200 and int(r.json()["version"]) > above:
                    return int(r.json()["version"])
            assert proc.poll() is None, "marketswarm run exited"
            assert time.monotonic() < deadline, f"no gex version above {above} within {timeout_s:.0f} s"
            time.sleep(0.5)

    with marketswarm_run(env) as proc:
        before = version(120)
        server = orjson.loads((data / "embedded.json").read_bytes())
        os.kill(server["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while orjson.loads((data / "embedded.json").read_bytes())["pid"] == server["pid"]:
            assert time.monotonic() < deadline, "the embedded server was not restarted"
            time.sleep(0.2)
        assert orjson.loads((data / "embedded.json").read_bytes())["url"] == server["url"]  # same port
        back = version(90, above=before)  # what the restarted server holds, or newer
        assert version(90, above=back) > back  # and publishing goes on
        r = redis.Redis.from_url(server["url"])
        assert r.xlen(streams.DLQ.key("SPX")) == 0  # the outage cost retries, not entries
        r.close()
