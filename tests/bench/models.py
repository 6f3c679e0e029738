"""Benchmark suites beyond the runtime: normalize, the columnar hops after calc, and the whole topology end to end.

Every figure is printed beside a baseline measured in the same run (see tests/bench/bench.py).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from functools import partial
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from marketswarm.agents.calc.grid import Grid, Window
from marketswarm.agents.calc.strategies import TileCalc, tile_values
from marketswarm.agents.normalize.normalizer import NORMALIZE, Normalizer
from marketswarm.agents.publish.publisher import Publisher
from marketswarm.agents.sources.simulated import SimMarket
from marketswarm.agents.sources.writer import RawWriter
from marketswarm.schemas import codec
from marketswarm.schemas.codec import RawFormat, RawFrame
from marketswarm.schemas.documents import model_json, tile_json
from marketswarm.schemas.events import ChainSnapshot, QuoteChange
from marketswarm.schemas.models import Staged
from marketswarm.topology import streams
from marketswarm.topology.agent import Entry
from marketswarm.topology.connections import create_redis
from marketswarm.topology.metrics import Metrics
from marketswarm.topology.runtime import Runtime
from marketswarm.topology.settings import Settings
from tests.bench.bench import Row
from tests.rig.realdata import real_data

NS = 1_000_000_000


def _burst(seconds: float = 4.0, rate: float = 50_000) -> list[tuple[str, bytes]]:
    """A recorded burst: the simulated market well beyond a busy 0DTE session."""
    t0 = time.time_ns() - int(seconds * NS) - NS
    m = SimMarket("SPX", 99, rate, t0)
    return [f for f in m.advance(t0 + int(seconds * NS)) if f[0] == RawFormat.WS]


def _events_in(frames: list[tuple[str, bytes]]) -> int:
    return sum(d.count(b'"ev"') for _, d in frames)


def normalize_suite(url: str, shared: dict[str, float]) -> list[Row]:
    frames = _burst()
    n_events = _events_in(frames)
    rx = time.time_ns()
    st = Settings(underlyings=["SPX"], batch_size=500, block_ms=50, redis_url=url)
    # The step alone (no Redis): parse, validate, type, encode.
    step = Normalizer(st, "SPX")
    ms = rx // 1_000_000  # entry ids carry the server's time of the entry
    entries = [Entry(f"{ms}-{i}", RawFrame(src=f, rx_ns=rx, data=d)) for i, (f, d) in enumerate(frames)]
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


def _chain() -> tuple[ChainSnapshot, str]:
    """The real SPX chain the README's figures are for; MissingDataError (the run stops) without it."""
    from marketswarm.agents.normalize.cboe_csv import parse_cboe_csv

    path = real_data() / "cboe" / "spx_2024-01-07_1052ET.csv"
    snap = parse_cboe_csv(path.read_bytes(), "SPX", ["SPX"]).events[0]
    assert isinstance(snap, ChainSnapshot)
    return snap, path.name


def columns_suite(url: str, shared: dict[str, float]) -> list[Row]:
    """Each hop after calc on a real SPX chain: time and bytes per changed tile, beside the per-tile
    JSON the same tiles would cost (what the staged and diffs streams carried before columns)."""
    snap, source = _chain()
    st = Settings()
    rows = []
    for strategy in ("single", "vertical", "butterfly"):
        window = Window(st.heatmap_expiries, st.heatmap_range_pct, st.max_width_steps)
        calc = TileCalc(st.model_settings, "SPX", strategy)
        calc._set_grid(Grid("bench", [c.symbol for c in snap.contracts], snap.spot, window))
        grid, tiles = calc.grid, calc.tiles
        assert grid is not None and tiles is not None
        for c in snap.contracts:
            grid.apply(QuoteChange(sym=c.symbol, ts_ns=snap.ts_ns, bid=c.bid, ask=c.ask))
        n_tiles = len(tiles)
        mid0, _ = grid.mids(np.arange(len(grid) + 1))
        mid_ext = mid0
        t_full = _median_s(partial(_full, grid, tiles, np.arange(n_tiles)), 30)
        # Baseline: the same gather and weighted sum, without validity or rounding.
        t_bare = _median_s(partial(_bare, tiles, mid_ext), 30)
        label = f"{strategy}: {n_tiles} tiles, {len(grid.series)} series ({source})"
        rows.append(
            Row(
                "columns",
                f"calc full recompute, {label}",
                t_full * 1e3,
                "ms",
                t_bare * 1e3,
                "bare gather+sum",
                "<= 5 ms",
            )
        )
        publisher = Publisher(st.model_settings, "SPX", strategy)
        reset = _staged(calc._emit(reset=True))
        publisher._apply(reset, "1-0")
        publisher._publish("structural", [], [])
        model = publisher.tiles
        # A market: quotes near the money, one contract at a time, each its own staged update.
        spot_k = int((snap.spot or 0) * 1000)
        atm = sorted(range(len(grid)), key=lambda p: abs(int(grid.symbols[p][-8:]) - spot_k))[:200]
        calc_s, staged_bytes, pub_s, diff_bytes, changed, json_bytes = 0.0, 0, 0.0, 0, 0, 0
        for i, p in enumerate(atm * 3):
            q = grid.quote(p)
            bid = (q.bid or 1.0) + 0.05 * ((i % 3) - 1)
            change = QuoteChange(sym=q.sym, ts_ns=q.ts_ns + i + 1, seq=i, bid=bid, ask=bid + 0.1)
            t0 = time.perf_counter()
            pos = grid.apply(change)
            if pos is not None:
                calc.dirty.add(pos)
            outs = calc._emit(reset=False)
            t1 = time.perf_counter()
            if not outs:
                continue
            staged = _staged(outs)
            publisher._apply(staged, f"{i + 2}-0")
            out: list[Any] = []
            publisher._publish("time", [], out)
            t2 = time.perf_counter()
            n = staged.cols.changed
            calc_s, pub_s, changed = calc_s + t1 - t0, pub_s + t2 - t1, changed + n
            staged_bytes += len(outs[0].fields["data"])
            diff_bytes += len(out[0].fields["data"]) if out else 0
            assert model.geometry is not None
            json_bytes += sum(
                len(tile_json(model.geometry, model.pub, model.pub_cts, int(x)) or b"") for x in staged.cols.positions()
            )
        rows.append(Row("columns", f"calc: one quote -> staged update, {strategy}", calc_s / changed * 1e6, "us/tile"))
        rows.append(
            Row(
                "columns",
                f"staged entry bytes per changed tile, {strategy}",
                staged_bytes / changed,
                "B",
                json_bytes / changed,
                "per-tile JSON of the same tiles",
            )
        )
        rows.append(Row("columns", f"publish: apply + version, {strategy}", pub_s / changed * 1e6, "us/tile"))
        rows.append(
            Row(
                "columns",
                f"diff entry bytes per changed tile, {strategy}",
                diff_bytes / changed,
                "B",
                json_bytes / changed,
                "per-tile JSON of the same tiles",
            )
        )
        t_json = _median_s(partial(model_json, strategy, model.geometry, model.pub, model.pub_cts, b"{}"), 5)
        rows.append(
            Row("columns", f"REST model JSON of the whole grid (once per version), {strategy}", t_json * 1e3, "ms")
        )
    return rows


def _staged(outputs: list[Any]) -> Staged:
    return codec.decode(streams.Payload.TILES, {k.encode(): _b(v) for k, v in outputs[0].fields.items()})  # type: ignore[no-any-return]


def _b(v: Any) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode()


def _full(grid: Grid, tiles: Any, sel: np.ndarray) -> None:
    tile_values(tiles, grid, sel)


def _bare(tiles: Any, mid_ext: np.ndarray) -> None:
    (tiles.weights * mid_ext[tiles.legs]).sum(axis=1)


def _median_s(fn: Any, n: int) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)
