"""What theo against market costs the calcs: the three heatmap calcs' CPU over the simulated market at
5,000 events/s, with their natural, theo and probability-of-profit columns, against the same calcs
without them and against the calc as it was before them, in the same run.

Four calcs, each over the same input: with the natural, theo and PoP columns; without theo and PoP;
the mid column alone (the same kernel); and the calc as it was before these columns (``Previous``).
The input is the simulated market's own frames (its chain polls, quotes, spot and VIX) for
``SECONDS`` of event time, normalized by the real step and made into changes entries the way hydrate
admits them (a chain snapshot announces its epoch, then every contract's quote and chain analytics;
the simulated market is in order, so nothing is stale). Each variant's three calcs process every
entry, bucket closes and theo refreshes included; their process CPU time is taken over the whole
input, ``PASSES`` times in A-B-B-A order, and the medians are compared.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from marketswarm.agents.calc.strategies import TileCalc, tile_values
from marketswarm.agents.normalize.normalizer import Normalizer
from marketswarm.agents.sources.simulated import SimMarket
from marketswarm.schemas import codec
from marketswarm.schemas.codec import RawFrame
from marketswarm.schemas.events import (
    ChainSnapshot,
    ChangeBatch,
    EpochChange,
    GreeksChange,
    Quote,
    QuoteChange,
    Spot,
    SpotChange,
    VolChange,
    VolIndex,
)
from marketswarm.schemas.payloads import Payload
from marketswarm.topology.agent import Entry
from marketswarm.topology.settings import Settings
from tests.bench.bench import Row

NS = 1_000_000_000
RATE = 5_000
SECONDS = 60
PASSES = 4


class MidOnly(TileCalc):
    """The same calc and kernel with the mid column alone and no theo refresh."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.k = 1

    def _theo_due(self) -> bool:
        return False

    def _recompute(
        self, positions: list[int], reset: bool, refresh: bool
    ) -> tuple[np.ndarray, np.ndarray, int, tuple[int, ...] | None]:
        assert self.grid is not None and self.tiles is not None
        none = np.zeros(0, dtype=np.int64), np.zeros((0, 1)), 0, None
        sel = np.arange(len(self.tiles)) if reset else self.tiles.touching(positions) if positions else None
        if sel is None or not len(sel):
            return none
        values, valid = tile_values(self.tiles, self.grid, sel)
        new = np.where(valid, values, np.nan)[:, None]
        old = self.values[sel]
        changed = valid if reset else ~((old == new) | (np.isnan(old) & np.isnan(new))).all(axis=1)
        self.values[sel] = new
        return sel[changed], new[changed], len(sel), None


class Previous(MidOnly):
    """The calc before these columns, as it was: the mid column alone, by the former kernel (every
    tile's three legs gathered as one (n, 3) block, validity from a sentinel leg) and comparison."""

    def _recompute(
        self, positions: list[int], reset: bool, refresh: bool
    ) -> tuple[np.ndarray, np.ndarray, int, tuple[int, ...] | None]:
        assert self.grid is not None and self.tiles is not None
        none = np.zeros(0, dtype=np.int64), np.zeros((0, 1)), 0, None
        sel = np.arange(len(self.tiles)) if reset else self.tiles.touching(positions) if positions else None
        if sel is None or not len(sel):
            return none
        mid, ok = self.grid.mids(self.tiles.legs[sel])
        valid = np.all(ok, axis=1)
        values = np.round((self.tiles.weights[sel] * mid).sum(axis=1), 6)
        old = self.values[sel, 0]
        new = np.where(valid, values, np.nan)
        changed = valid if reset else ~((old == new) | (np.isnan(old) & np.isnan(new)))
        self.values[sel, 0] = new
        return sel[changed], new[changed][:, None], len(sel), None


class NoTheo(TileCalc):
    """Mid and natural debit: the same calc without the theo and probability columns."""

    def _theo_due(self) -> bool:
        return False


def _changes(events: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for ev in events:
        if isinstance(ev, Quote):
            out.append(QuoteChange(sym=ev.symbol, ts_ns=ev.ts_ns, seq=ev.seq, bid=ev.bid, ask=ev.ask))
        elif isinstance(ev, Spot):
            out.append(SpotChange(ts_ns=ev.ts_ns, value=ev.value))
        elif isinstance(ev, VolIndex):
            out.append(VolChange(name=ev.name, ts_ns=ev.ts_ns, value=ev.value))
        elif isinstance(ev, ChainSnapshot):
            epoch = f"e{ev.ts_ns}"
            out.append(
                EpochChange(epoch=epoch, ts_ns=ev.ts_ns, symbols=tuple(c.symbol for c in ev.contracts), spot=ev.spot)
            )
            for c in ev.contracts:
                out.append(QuoteChange(sym=c.symbol, ts_ns=c.quote_ts_ns or ev.ts_ns, bid=c.bid, ask=c.ask))
                out.append(GreeksChange(sym=c.symbol, ts_ns=ev.ts_ns, iv=c.iv, gamma=c.gamma, oi=c.oi))
            if ev.spot is not None:
                out.append(SpotChange(ts_ns=ev.ts_ns, value=ev.spot))
    return out


def changes_entries() -> tuple[list[Entry], int]:
    """The simulated market's changes entries over SECONDS at RATE, and the events behind them."""
    t0 = int(time.time() // 86400 * 86400 * NS + 15 * 3600 * NS)  # today, 10:00 New York (winter) in UTC
    m = SimMarket("SPX", 7, RATE, t0)
    step = Normalizer(Settings(underlyings=["SPX"]), "SPX")
    entries, n_events = [], 0
    frames = [(t, f) for step in range(1, SECONDS * 4 + 1) for t in [t0 + step * NS // 4] for f in m.advance(t)]
    for i, (rx, (fmt, data)) in enumerate(frames):
        raw = Entry(f"{rx // 1_000_000}-{i}", RawFrame(src=fmt, rx_ns=rx, data=data))  # ids carry the time of entry
        for out in step.process([raw]).outputs:
            if out.spec.payload is not Payload.EVENTS:
                continue
            fields = {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in out.fields.items()}
            batch = codec.decode(Payload.EVENTS, fields)
            n_events += sum(not isinstance(e, ChainSnapshot) for e in batch.events)
            changes = _changes(batch.events)
            if changes:
                cb = ChangeBatch(src=raw.id, rx_ns=rx, epoch="", changes=tuple(changes))
                entries.append(Entry(raw.id, cb))
    return entries, n_events


def _cpu_s(kind: type[TileCalc], entries: list[Entry]) -> float:
    st = Settings()
    calcs = [kind(st.model_settings, "SPX", s) for s in ("single", "vertical", "butterfly")]
    t0 = time.process_time()
    for calc in calcs:
        for i in range(0, len(entries), 100):  # the calcs' batch size (AgentSpec max_batch)
            calc.process(entries[i : i + 100])
        calc.flush()
    return time.process_time() - t0


def theo_suite(url: str, shared: dict[str, float]) -> list[Row]:
    entries, n_events = changes_entries()
    cpu: dict[type[TileCalc], list[float]] = {TileCalc: [], NoTheo: [], MidOnly: [], Previous: []}
    kinds = list(cpu)
    for i in range(PASSES):  # A B C D, D C B A, ...
        for kind in kinds if i % 2 == 0 else kinds[::-1]:
            cpu[kind].append(_cpu_s(kind, entries))
    full, natural, mid, previous = (statistics.median(cpu[k]) for k in kinds)
    what = f"{RATE:,} events/s for {SECONDS} s of event time ({n_events:,} events)"
    return [
        Row(
            "theo",
            f"heatmap calcs' CPU with natural, theo and PoP columns, {what}",
            100 * full / SECONDS,
            "%",
            100 * mid / SECONDS,
            "the mid column alone",
            key="theo_calc_cpu_pct_at_5000",
        ),
        Row(
            "theo",
            "... with natural debit, no theo or PoP",
            100 * natural / SECONDS,
            "%",
            100 * mid / SECONDS,
            "the mid column alone",
        ),
        Row(
            "theo",
            "theo and PoP columns: calc CPU over the calc without them (mid and natural)",
            full / natural,
            "x",
            target="<= 1.10",
            key="theo_calc_cpu_ratio_at_5000",
        ),
        Row("theo", "natural, theo and PoP columns: calc CPU over the mid column alone", full / mid, "x"),
        Row(
            "theo",
            "the calc with them over the calc before them (the mid alone, the former kernel)",
            full / previous,
            "x",
            target="<= 1.10",
            key="theo_calc_cpu_ratio_to_previous_at_5000",
        ),
    ]
