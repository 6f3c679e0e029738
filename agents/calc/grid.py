"""The heatmap grid of an epoch: which contracts the structures are built from, and their quotes.

One series per (expiry, side), from the preferred root of that expiry (SPXW over SPX's AM-settled
monthlies on the third Friday; schemas/occ.py ``series_priority``). The heatmap window keeps the
nearest ``heatmap_expiries`` expiries and the strikes within ``heatmap_range_pct`` of the spot known
when the epoch began, so the tile set of an epoch is fixed. Quotes are held in flat numpy arrays over
the grid's positions; ``mid`` is (bid + ask) / 2 only when both sides are present (> 0) and not crossed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from marketswarm.schemas.events import QuoteChange
from marketswarm.schemas.occ import SymbolError, parse_occ, series_priority


@dataclass(frozen=True)
class Window:
    expiries: int = 5
    range_pct: float = 4.0
    max_width_steps: int = 20


@dataclass(frozen=True)
class Series:
    expiry: str
    side: str
    start: int  # first flat position
    strikes: np.ndarray  # int64 thousandths, ascending
    symbols: tuple[str, ...]
    step_x1000: int  # the grid step: the most common strike spacing

    @property
    def stop(self) -> int:
        return self.start + len(self.symbols)


def grid_step(strikes: np.ndarray) -> int:
    if len(strikes) < 2:
        return 1000
    diffs = np.diff(strikes)
    values, counts = np.unique(diffs, return_counts=True)
    return int(values[np.argmax(counts)])


class Grid:
    """Positions, series and quote arrays for one epoch's heatmap window."""

    def __init__(self, epoch: str, symbols: Iterable[str], spot: float | None, window: Window) -> None:
        self.epoch = epoch
        self.window = window
        by_expiry: dict[str, dict[str, list[tuple[int, str, str]]]] = {}
        for sym in symbols:
            try:
                o = parse_occ(sym)
            except SymbolError:
                continue
            by_expiry.setdefault(o.expiry.isoformat(), {}).setdefault(o.root, []).append((o.strike_x1000, o.side, sym))
        expiries = sorted(by_expiry)[: window.expiries]
        lo = hi = None
        if spot:
            lo, hi = spot * (1 - window.range_pct / 100) * 1000, spot * (1 + window.range_pct / 100) * 1000
        series: list[Series] = []
        symbols_flat: list[str] = []
        for e in expiries:
            roots = by_expiry[e]
            root = max(roots, key=lambda r: (series_priority(r), len(roots[r]), r))
            for side in ("call", "put"):
                legs = sorted((k, s) for k, sd, s in roots[root] if sd == side and (lo is None or lo <= k <= hi))  # type: ignore[operator]
                if not legs:
                    continue
                strikes = np.array([k for k, _ in legs], dtype=np.int64)
                syms = tuple(s for _, s in legs)
                series.append(Series(e, side, len(symbols_flat), strikes, syms, grid_step(strikes)))
                symbols_flat.extend(syms)
        self.series = series
        self.symbols = symbols_flat
        self.pos = {s: i for i, s in enumerate(symbols_flat)}
        n = len(symbols_flat)
        self.bid = np.full(n, np.nan)
        self.ask = np.full(n, np.nan)
        self.ts = np.zeros(n, dtype=np.int64)
        self.seq = np.zeros(n, dtype=np.int64)
        self.seen = np.zeros(n, dtype=bool)

    def __len__(self) -> int:
        return len(self.symbols)

    def apply(self, q: QuoteChange) -> int | None:
        """Take a quote if it is newer than what the position holds; return the position if taken."""
        p = self.pos.get(q.sym)
        if p is None:
            return None
        if self.seen[p] and (q.ts_ns, q.seq) <= (int(self.ts[p]), int(self.seq[p])):
            return None
        self.bid[p] = np.nan if q.bid is None else q.bid
        self.ask[p] = np.nan if q.ask is None else q.ask
        self.ts[p] = q.ts_ns
        self.seq[p] = q.seq
        self.seen[p] = True
        return p

    def mids(self) -> tuple[np.ndarray, np.ndarray]:
        """(mid, has_mid) over all positions."""
        with np.errstate(invalid="ignore"):
            ok = (self.bid > 0) & (self.ask > 0) & (self.bid <= self.ask)
        mid = np.where(ok, (self.bid + self.ask) / 2, np.nan)
        return mid, ok

    def carry_from(self, other: Grid) -> None:
        """Take the quotes of contracts this grid shares with ``other`` (a new epoch's first values)."""
        common = [(p, other.pos[s]) for s, p in self.pos.items() if s in other.pos]
        if not common:
            return
        mine, theirs = (np.array(x, dtype=np.int64) for x in zip(*common, strict=True))
        for arr in ("bid", "ask", "ts", "seq", "seen"):
            getattr(self, arr)[mine] = getattr(other, arr)[theirs]

    def quote(self, p: int) -> QuoteChange:
        b, a = self.bid[p], self.ask[p]
        return QuoteChange(
            sym=self.symbols[p],
            ts_ns=int(self.ts[p]),
            seq=int(self.seq[p]),
            bid=None if np.isnan(b) else float(b),
            ask=None if np.isnan(a) else float(a),
        )


@dataclass(frozen=True)
class Tiles:
    """All tiles of one strategy over a grid: legs as flat positions (``n`` = the sentinel), weights."""

    legs: np.ndarray  # (T, 3) int64; unused legs point at the sentinel position
    weights: np.ndarray  # (T, 3) float64
    width_x1000: np.ndarray  # (T,)
    keys: list[str]
    prefix: list[str]  # the tile JSON up to its values
    csr_ptr: np.ndarray  # position -> tiles touching it: tiles csr_idx[csr_ptr[p]:csr_ptr[p+1]]
    csr_idx: np.ndarray

    def touching(self, positions: Sequence[int]) -> np.ndarray:
        """Tiles with a leg at any of ``positions``, ascending (a mask, not a sort: this is hot)."""
        if not len(positions):
            return np.zeros(0, dtype=np.int64)
        mask = np.zeros(len(self.keys), dtype=bool)
        mask[np.concatenate([self.csr_idx[self.csr_ptr[p] : self.csr_ptr[p + 1]] for p in positions])] = True
        return np.flatnonzero(mask)


def build_tiles(grid: Grid, strategy: str) -> Tiles:
    """Enumerate the tiles of a strategy: single, vertical or butterfly."""
    n = len(grid)
    legs: list[tuple[int, int, int]] = []
    weights: list[tuple[float, float, float]] = []
    widths: list[int] = []
    keys: list[str] = []
    prefix: list[str] = []
    for s in grid.series:
        index = {int(k): s.start + i for i, k in enumerate(s.strikes)}
        widths_x1000 = (
            [0] if strategy == "single" else [s.step_x1000 * m for m in range(1, grid.window.max_width_steps + 1)]
        )
        for w in widths_x1000:
            for i, k in enumerate(s.strikes):
                k = int(k)
                p = s.start + i
                if strategy == "single":
                    leg, wt = (p, n, n), (1.0, 0.0, 0.0)
                elif strategy == "vertical":
                    other = index.get(k + w if s.side == "call" else k - w)
                    if other is None:
                        continue
                    leg, wt = (p, other, n), (1.0, -1.0, 0.0)
                else:
                    lo_p, hi_p = index.get(k - w), index.get(k + w)
                    if lo_p is None or hi_p is None:
                        continue
                    leg, wt = (lo_p, p, hi_p), (1.0, -2.0, 1.0)
                key = f"{s.expiry}|{s.side[0]}|{k}|{w}"
                leg_syms = ",".join(f'"{grid.symbols[x]}"' for x in leg if x != n)
                legs.append(leg)
                weights.append(wt)
                widths.append(w)
                keys.append(key)
                prefix.append(
                    f'{{"k":"{key}","expiry":"{s.expiry}","side":"{s.side}","strike":{k / 1000!r},'
                    f'"width":{w / 1000!r},"legs":[{leg_syms}],'
                )
    legs_a = np.array(legs, dtype=np.int64).reshape(-1, 3)
    counts = np.zeros(n + 2, dtype=np.int64)
    for leg in legs:
        for x in set(leg):
            if x != n:
                counts[x + 1] += 1
    ptr = np.cumsum(counts)[: n + 1]
    fill = ptr[:-1].copy()
    idx = np.zeros(int(ptr[-1]), dtype=np.int64)
    for t, leg in enumerate(legs):
        for x in set(leg):
            if x != n:
                idx[fill[x]] = t
                fill[x] += 1
    return Tiles(
        legs=legs_a,
        weights=np.array(weights, dtype=np.float64).reshape(-1, 3),
        width_x1000=np.array(widths, dtype=np.int64),
        keys=keys,
        prefix=prefix,
        csr_ptr=ptr,
        csr_idx=idx,
    )
