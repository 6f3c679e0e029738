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
from functools import cached_property

import numpy as np

from marketswarm.schemas.events import GreeksChange, QuoteChange
from marketswarm.schemas.models import I16, I32, I64, Geometry, pack
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
        # One slot past the grid: the sentinel leg of tiles with fewer than three legs (mid 0, valid).
        self.bid_x = np.full(n + 1, np.nan)
        self.ask_x = np.full(n + 1, np.nan)
        self.bid_x[n] = self.ask_x[n] = 0.0
        self.bid = self.bid_x[:n]
        self.ask = self.ask_x[:n]
        self.ts = np.zeros(n, dtype=np.int64)
        self.seq = np.zeros(n, dtype=np.int64)
        self.seen = np.zeros(n, dtype=bool)
        self.iv = np.full(n, np.nan)  # the chain's implied volatility (decimal)
        self.first_seen = 0  # positions quoted for the first time: bumps when ``seen`` grows

    def __len__(self) -> int:
        return len(self.symbols)

    def apply(self, q: QuoteChange) -> int | None:
        """Take an admitted quote; return its position (None outside the grid). Hydrate admits only
        strictly newer values, in its own order (a provider's time beats a receive time, whatever the
        numbers), so the changes stream is already in that order and the grid takes every one."""
        p = self.pos.get(q.sym)
        if p is None:
            return None
        self.bid[p] = np.nan if q.bid is None else q.bid
        self.ask[p] = np.nan if q.ask is None else q.ask
        self.ts[p] = q.ts_ns
        self.seq[p] = q.seq
        if not self.seen[p]:
            self.seen[p] = True
            self.first_seen += 1
        return p

    def apply_iv(self, g: GreeksChange) -> bool:
        """Take a contract's chain analytics; whether its IV (the smile's input) changed."""
        p = self.pos.get(g.sym)
        if p is None:
            return False
        iv = np.nan if g.iv is None else g.iv
        if iv == self.iv[p] or (np.isnan(iv) and np.isnan(self.iv[p])):
            return False
        self.iv[p] = iv
        return True

    def mids(self, legs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mid, has_mid) at the positions ``legs`` (any shape; the sentinel has mid 0 and counts as
        quoted). Mid is (bid + ask) / 2 only with both sides present and not crossed; else 0, False."""
        b, a = self.bid_x[legs], self.ask_x[legs]
        with np.errstate(invalid="ignore"):
            ok = ((b > 0) & (a > 0) & (b <= a)) | (legs == len(self.symbols))
        return np.where(ok, (b + a) / 2, 0.0), ok

    def carry_from(self, other: Grid) -> None:
        """Take the quotes of contracts this grid shares with ``other`` (a new epoch's first values)."""
        common = [(p, other.pos[s]) for s, p in self.pos.items() if s in other.pos]
        if not common:
            return
        mine, theirs = (np.array(x, dtype=np.int64) for x in zip(*common, strict=True))
        for arr in ("bid", "ask", "ts", "seq", "seen", "iv"):
            getattr(self, arr)[mine] = getattr(other, arr)[theirs]
        self.first_seen += 1

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
    """All tiles of one strategy over a grid, in the published order (series, then strike, then width):
    a tile is its position here. Legs are flat grid positions (``n`` = the sentinel), with weights."""

    legs: np.ndarray  # (T, 3) int64; unused legs point at the sentinel position
    weights: np.ndarray  # (T, 3) float64
    n_legs: int
    series: np.ndarray  # (T,) int16: index into grid.series
    strike_x1000: np.ndarray  # (T,) int64
    width_x1000: np.ndarray  # (T,) int64
    csr_ptr: np.ndarray  # position -> tiles touching it: tiles csr_idx[csr_ptr[p]:csr_ptr[p+1]]
    csr_idx: np.ndarray

    def __len__(self) -> int:
        return len(self.width_x1000)

    @cached_property
    def leg_columns(self) -> tuple[tuple[float, np.ndarray], ...]:
        """(weight, every tile's leg position) per leg the strategy uses: the weights are the same for
        every tile of a strategy, so the kernels work leg by leg on contiguous columns."""
        return (
            tuple((float(self.weights[0, j]), np.ascontiguousarray(self.legs[:, j])) for j in range(self.n_legs))
            if len(self)
            else ()
        )

    def touching(self, positions: Sequence[int]) -> np.ndarray:
        """Tiles with a leg at any of ``positions``, ascending (a mask, not a sort: this is hot)."""
        if not len(positions):
            return np.zeros(0, dtype=np.int64)
        mask = np.zeros(len(self), dtype=bool)
        mask[np.concatenate([self.csr_idx[self.csr_ptr[p] : self.csr_ptr[p + 1]] for p in positions])] = True
        return np.flatnonzero(mask)


N_LEGS = {"single": 1, "vertical": 2, "butterfly": 3}


def build_tiles(grid: Grid, strategy: str) -> Tiles:
    """Enumerate the tiles of a strategy (single, vertical or butterfly) in the published order:
    series (expiry, then call before put), strike ascending, width ascending."""
    n = len(grid)
    legs: list[tuple[int, int, int]] = []
    weights: list[tuple[float, float, float]] = []
    series: list[int] = []
    strikes: list[int] = []
    widths: list[int] = []
    for si, s in enumerate(grid.series):
        index = {int(k): s.start + i for i, k in enumerate(s.strikes)}
        widths_x1000 = (
            [0] if strategy == "single" else [s.step_x1000 * m for m in range(1, grid.window.max_width_steps + 1)]
        )
        for i, k in enumerate(s.strikes):
            k = int(k)
            p = s.start + i
            for w in widths_x1000:
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
                legs.append(leg)
                weights.append(wt)
                series.append(si)
                strikes.append(k)
                widths.append(w)
    legs_a = np.array(legs, dtype=np.int64).reshape(-1, 3)
    # CSR of position -> tiles touching it (a tile is listed once per distinct leg position).
    owners = np.repeat(np.arange(len(legs_a)), 3)
    flat = legs_a.reshape(-1)
    keep = flat != n
    pairs = np.unique(np.stack([flat[keep], owners[keep]], axis=1), axis=0) if keep.any() else np.zeros((0, 2), int)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(pairs[:, 0], minlength=n), out=ptr[1:])
    return Tiles(
        legs=legs_a,
        weights=np.array(weights, dtype=np.float64).reshape(-1, 3),
        n_legs=N_LEGS[strategy],
        series=np.array(series, dtype=np.int16),
        strike_x1000=np.array(strikes, dtype=np.int64),
        width_x1000=np.array(widths, dtype=np.int64),
        csr_ptr=ptr,
        csr_idx=pairs[:, 1].astype(np.int64),
    )


def geometry(underlying: str, strategy: str, grid: Grid, tiles: Tiles) -> Geometry:
    """The epoch's published geometry of a strategy's tiles."""
    return Geometry(
        underlying=underlying,
        strategy=strategy,
        epoch=grid.epoch,
        n_legs=tiles.n_legs,
        expiries=tuple(s.expiry for s in grid.series),
        sides=tuple(s.side for s in grid.series),
        steps_x1000=tuple(s.step_x1000 for s in grid.series),
        contracts=tuple(grid.symbols),
        series=pack(tiles.series, I16),
        strike=pack(tiles.strike_x1000, I64),
        width=pack(tiles.width_x1000, I64),
        legs=pack(tiles.legs[:, : tiles.n_legs], I32),
    )
