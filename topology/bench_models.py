"""Benchmark suites beyond the runtime: normalize, the calc kernels, and the whole topology end to end.

Every figure is printed beside a baseline measured in the same run (see topology/bench.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from marketswarm.agents.calc.grid import Grid, Window
from marketswarm.agents.calc.strategies import TileCalc, tile_values
from marketswarm.agents.normalize import NORMALIZE, WS, Normalizer
from marketswarm.agents.sources.simulated import SimMarket
from marketswarm.agents.sources.writer import RawWriter
from marketswarm.schemas import codec
from marketswarm.schemas.codec import RawFrame
from marketswarm.schemas.events import ChainSnapshot, QuoteChange
from marketswarm.topology import graph, streams
from marketswarm.topology.agent import Entry
from marketswarm.topology.bench import Row
from marketswarm.topology.connections import create_redis
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.pipeline import group_backlog
from marketswarm.topology.runtime import Runtime
from marketswarm.topology.settings import Settings

NS = 1_000_000_000
SHARED_CBOE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real" / "cboe"


def _burst(seconds: float = 4.0, rate: float = 50_000) -> list[tuple[str, bytes]]:
    """A recorded burst: the simulated market well beyond a busy 0DTE session."""
    t0 = time.time_ns() - int(seconds * NS) - NS
    m = SimMarket("SPX", 99, rate, t0)
    return [f for f in m.advance(t0 + int(seconds * NS)) if f[0] == WS]


def _events_in(frames: list[tuple[str, bytes]]) -> int:
    return sum(d.count(b'"ev"') for _, d in frames)


def normalize_suite(url: str, shared: dict[str, float]) -> list[Row]:
    frames = _burst()
    n_events = _events_in(frames)
    rx = time.time_ns()
    st = Settings(underlyings=["SPX"], batch_size=500, block_ms=50, redis_url=url)
    # The step alone (no Redis): parse, validate, type, encode.
    step = Normalizer(st, "SPX", Metrics(CollectorRegistry()))
    entries = [Entry(f"{i + 1}-0", RawFrame(src=f, rx_ns=rx, data=d)) for i, (f, d) in enumerate(frames)]
    t0 = time.perf_counter()
    for i in range(0, len(entries), 500):
        step.process(entries[i : i + 500])
    step_rate = n_events / (time.perf_counter() - t0)

    async def hop() -> tuple[float, float]:
        r = create_redis(url)
        derived = [streams.EVENTS.key("SPX"), streams.REJECTS.key("SPX")]
        key = streams.RAW.key("SPX")
        await r.delete(key, *derived)
        await RawWriter(r, Metrics(CollectorRegistry()), "bench").write("SPX", frames, rx)
        # Baseline: a bare XREADGROUP + XACK loop over the same entries, counting the events they carry.
        await r.xgroup_create(key, "bare", id="0")
        t0 = time.perf_counter()
        done = 0
        while done < len(frames):
            resp = await r.xreadgroup("bare", "b", {key: ">"}, count=500)
            await r.xack(key, "bare", *[e[0] for e in resp[0][1]])
            done += len(resp[0][1])
        bare = n_events / (time.perf_counter() - t0)
        await r.xgroup_create(key, NORMALIZE.name, id="0")
        t0 = time.perf_counter()
        await Runtime(NORMALIZE, st, r, Metrics(CollectorRegistry())).run(max_entries=len(frames))
        rate = n_events / (time.perf_counter() - t0)
        await r.delete(key, *derived)  # the end-to-end suite starts from empty streams
        await r.aclose()
        return rate, bare

    hop_rate, bare = asyncio.run(hop())
    return [
        Row("normalize", "normalize step only (parse, validate, encode)", step_rate, "events/s", target=">= 100k"),
        Row(
            "normalize",
            "normalize hop (read, step, commit)",
            hop_rate,
            "events/s",
            bare,
            "bare XREADGROUP+XACK, same entries",
        ),
    ]


def _real_spx() -> tuple[ChainSnapshot | None, str]:
    from marketswarm.agents.cboe_csv import parse_cboe_csv

    path = SHARED_CBOE / "spx_2024-01-07_1052ET.csv"
    if not path.exists():
        return None, "simulated SPX chain"
    snap = parse_cboe_csv(path.read_bytes(), "SPX", ["SPX"]).events[0]
    assert isinstance(snap, ChainSnapshot)
    return snap, path.name


def calc_suite(url: str, shared: dict[str, float]) -> list[Row]:
    snap, source = _real_spx()
    if snap is None:
        m = SimMarket("SPX", 1, 0, time.time_ns())
        from marketswarm.agents.massive_frames import parse_rest_chain

        parsed = parse_rest_chain(m.chain_frame(), time.time_ns(), "SPX", ["SPX"])
        snap = parsed.events[0]  # type: ignore[assignment]
    assert snap is not None
    st = Settings()
    rows = []
    for strategy in ("single", "vertical", "butterfly"):
        window = Window(st.heatmap_expiries, st.heatmap_range_pct, st.max_width_steps)
        calc = TileCalc(st, "SPX", Metrics(CollectorRegistry()), strategy)
        calc._set_grid(Grid("bench", [c.symbol for c in snap.contracts], snap.spot, window))
        grid, tiles = calc.grid, calc.tiles
        assert grid is not None and tiles is not None
        for c in snap.contracts:
            grid.apply(QuoteChange(sym=c.symbol, ts_ns=snap.ts_ns, bid=c.bid, ask=c.ask))
        n_tiles = len(tiles.keys)
        everything = np.arange(n_tiles)

        mid0, _ = grid.mids()
        mid_ext = np.append(np.nan_to_num(mid0), 0.0)
        t_full = _median_s(partial(_full, grid, tiles, everything), 30)
        # Baseline: the same gather and weighted sum, without validity or rounding.
        t_bare = _median_s(partial(_bare, tiles, mid_ext), 30)
        t_reset = _median_s(partial(calc._recompute, [], True), 5)
        spot_k = int((snap.spot or 0) * 1000)
        atm = sorted(range(len(grid)), key=lambda p: abs(int(grid.symbols[p][-8:]) - spot_k))[:200]
        times = []
        for i, p in enumerate(atm * 3):
            q = grid.quote(p)
            bid = (q.bid or 1.0) + 0.05 * ((i % 3) - 1)
            change = QuoteChange(sym=q.sym, ts_ns=q.ts_ns + i + 1, seq=i, bid=bid, ask=bid + 0.1)
            t0 = time.perf_counter()
            pos = grid.apply(change)
            calc._recompute([pos] if pos is not None else [], False)
            times.append(time.perf_counter() - t0)
        t_incr = statistics.median(times)
        label = f"{strategy}: {n_tiles} tiles, {len(grid.series)} series ({source})"
        rows.append(
            Row("calc", f"full recompute, {label}", t_full * 1e3, "ms", t_bare * 1e3, "bare gather+sum", "<= 5 ms")
        )
        rows.append(Row("calc", f"full recompute + tile JSON, {strategy}", t_reset * 1e3, "ms"))
        rows.append(
            Row("calc", f"one changed contract, {strategy} (incl. JSON)", t_incr * 1e6, "us", target="<= 200 us")
        )
    return rows


def _full(grid: Grid, tiles: Any, sel: np.ndarray) -> None:
    mid, ok = grid.mids()
    tile_values(tiles, mid, ok, sel)


def _bare(tiles: Any, mid_ext: np.ndarray) -> None:
    (tiles.weights * mid_ext[tiles.legs]).sum(axis=1)


def _median_s(fn: Any, n: int) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


# --- end to end -------------------------------------------------------------------------------

E2E_RATES = (1_000, 5_000, 10_000, 20_000, 30_000)
E2E_SECONDS = 8.0
E2E_DRAIN_S = 30.0
E2E_UNDERLYINGS = ("SPX", "NDX")


def process_groups() -> list[list[str]]:
    """Agents per process, as `marketswarm run` starts them (MARKETSWARM_PROCESSES)."""
    from marketswarm.topology.supervisor import group_agents

    return group_agents([s.name for s in graph.agents()], Settings().processes)


def e2e_suite(url: str, shared: dict[str, float]) -> list[Row]:
    """The simulated market at increasing rates through every agent (one process each, as `run`)."""
    env = dict(os.environ)
    env.update(
        MARKETSWARM_REDIS_URL=url,
        MARKETSWARM_UNDERLYINGS=",".join(E2E_UNDERLYINGS),
        MARKETSWARM_PUBLISH_INTERVAL_MS="50",
        MARKETSWARM_CALC_BUCKET_MS="20",
        MARKETSWARM_BLOCK_MS="200",
        MARKETSWARM_LOG_LEVEL="WARNING",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    exe = shutil.which("marketswarm", path=str(Path(sys.executable).parent)) or "marketswarm"
    groups = process_groups()
    procs = [subprocess.Popen([exe, "agent", *group], env=env) for group in groups]
    pids = {"+".join(g): p.pid for g, p in zip(groups, procs, strict=True)}
    if "server_pid" in shared:
        pids["valkey"] = int(shared["server_pid"])
    try:
        return asyncio.run(_e2e(url, shared, pids))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(20)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _e2e(url: str, shared: dict[str, float], pids: dict[str, int]) -> list[Row]:
    r = create_redis(url, block_ms=1000)
    writer = RawWriter(r, Metrics(CollectorRegistry()), "bench")
    specs = graph.agents()
    now = time.time_ns()
    rows = []
    ceiling = shared.get("runtime_ceiling_1000")
    markets = {u: SimMarket(u, 5, 0, now) for u in E2E_UNDERLYINGS}
    # Warm up: first chain snapshots, epochs, first versions.
    for u, m in markets.items():
        await writer.write(u, m.advance(time.time_ns()), time.time_ns())
    await _wait_drained(r, specs, 60)
    for rate in E2E_RATES:
        for m in markets.values():
            m.rate = rate / len(markets)
            m.skip_to(time.time_ns())  # no burst of back-dated events for the pause between rates
        latencies: list[float] = []
        tiles: list[int] = []
        stop = asyncio.Event()
        reader = asyncio.create_task(_latencies(url, latencies, tiles, stop))
        cpu0 = {name: _cpu_s(pid) for name, pid in pids.items()}
        lags: list[int] = []
        events = 0
        t_start = time.monotonic()
        next_lag = t_start
        while time.monotonic() - t_start < E2E_SECONDS:
            tick = time.time_ns()
            for u, m in markets.items():
                frames = m.advance(tick)
                events += _events_in(frames)
                await writer.write(u, frames, tick)
            if time.monotonic() >= next_lag:
                lags.append(await group_backlog(r, specs, E2E_UNDERLYINGS))
                next_lag += 0.5
            await asyncio.sleep(max(0.0, 0.02 - (time.time_ns() - tick) / NS))
        gen_s = time.monotonic() - t_start
        cpu = {name: (_cpu_s(pid) - cpu0[name]) / gen_s for name, pid in pids.items()}
        drained = await _wait_drained(r, specs, E2E_DRAIN_S)
        total_s = time.monotonic() - t_start
        stop.set()
        await reader
        sustained = events / total_s if drained else events / (total_s + E2E_DRAIN_S)
        name = f"offered {rate:,}/s: {'drained' if drained else 'NOT drained'} {total_s - gen_s:.1f}s after"
        rows.append(
            Row("e2e", name + ", sustained", sustained, "events/s", ceiling, "runtime ceiling (batch 1000)", ">= 20k")
        )
        rows.append(Row("e2e", f"offered {rate:,}/s: max consumer lag", float(max(lags or [0])), "entries"))
        if latencies:
            p50, p99 = np.percentile(latencies, [50, 99])
            target = "p99 <= 100 ms" if rate == 5_000 else ""
            rows.append(Row("e2e", f"offered {rate:,}/s: event-to-publish p50", p50 * 1e3, "ms"))
            rows.append(Row("e2e", f"offered {rate:,}/s: event-to-publish p99", p99 * 1e3, "ms", target=target))
            rows.append(
                Row("e2e", f"offered {rate:,}/s: tiles per heatmap version (mean)", float(np.mean(tiles)), "tiles")
            )
        if rate == 5_000:  # where the cores go, at the rate of the latency target
            for name, share in sorted(cpu.items(), key=lambda kv: -kv[1]):
                rows.append(Row("e2e", f"offered {rate:,}/s: CPU of {name}", share * 100, "% of a core"))
    await r.aclose()
    return rows


async def _wait_drained(r: Any, specs: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await group_backlog(r, specs, E2E_UNDERLYINGS) == 0:
            return True
        await asyncio.sleep(0.1)
    return False


async def _latencies(url: str, out: list[float], tiles: list[int], stop: asyncio.Event) -> None:
    """Tail the diffs streams (plain XREAD): time each diff against its newest event, count its tiles."""
    r = create_redis(url, block_ms=200)
    cursors: dict[str, bytes | str] = {
        streams.DIFFS[s].key(u): "$" for u in E2E_UNDERLYINGS for s in ("single", "vertical", "butterfly")
    }
    while not stop.is_set():
        resp = await r.xread(cursors, block=200, count=100)
        now = time.time_ns()
        for key, entries in resp or ():
            for entry_id, fields in entries:
                cursors[key.decode()] = entry_id
                diff = codec.decode(streams.Payload.DIFF, fields)
                out.append((now - diff.asof_ns) / NS)
                tiles.append(len(diff.upserts) + len(diff.values) + len(diff.removes))
    await r.aclose()
