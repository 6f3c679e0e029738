"""Theo against market for a heatmap's tiles: natural debit, theoretical debit, probability of profit.

Beside its mid (``value``), every tile carries

* ``natural``: the debit paid crossing the market: asks of the legs bought, bids of the legs sold;
* ``theo``: the sum of its legs' Black-Scholes values on their series' smile (schemas/smile.py), at the
  spot and event time of the last *theo refresh*;
* ``pop``: the probability that it pays more than its natural debit at expiry, under the distribution
  the same smile implies (its expected payoff is ``theo``, so its expected value is ``theo - natural``).
  It is priced with theo, at the natural debit of that moment.

A theo refresh re-prices every contract and every tile. Re-pricing on every spot tick would change every
tile in every version, so it happens when the grid is new or the chain's IVs changed, when spot has moved
``theo_spot_step_bp`` basis points from the spot of the last refresh, or ``theo_refresh_s`` of event
time after it: all functions of the changes stream, so replays stay byte-identical. Between refreshes a
tile's mid and natural debit follow its quotes (one gather of its legs' quotes gives both); its theo and
probability wait for the next refresh, which keeps the columns' cost near the mid's alone (``make
bench``'s ``theo`` suite measures it).
Theo is rounded to the cent and the probability to 0.1 %, so a refresh sends only the tiles whose
numbers moved at that precision.
"""

from __future__ import annotations

import numpy as np

from marketswarm.agents.calc.grid import Grid, Tiles
from marketswarm.schemas import blackscholes as bs
from marketswarm.schemas import smile as sm
from marketswarm.schemas.markettime import expiry_close_ns

THEO_DECIMALS = 2
POP_DECIMALS = 3


def tile_columns(
    tiles: Tiles, grid: Grid, sel: np.ndarray, natural: bool = True
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(mid, natural debit, valid) of the selected tiles, leg by leg (``Tiles.leg_columns``), each leg's
    quotes gathered once for both: the mid sums the legs' weighted mids (a leg's mid is (bid + ask) / 2
    with both sides present and not crossed; else the tile is not valid); the natural debit pays the
    asks of the legs bought and takes the bids of the legs sold. ``natural=False``: the mid alone."""
    mid = nat = valid = None
    for w, column in tiles.leg_columns:
        legs = column[sel]
        b, a = grid.bid_x[legs], grid.ask_x[legs]
        with np.errstate(invalid="ignore"):
            ok = (b > 0) & (b <= a)
        m = w * np.where(ok, (b + a) / 2, 0.0)
        mid = m if mid is None else mid + m
        valid = ok if valid is None else valid & ok
        if natural:
            n = w * (a if w > 0 else b)
            nat = n if nat is None else nat + n
    assert mid is not None and valid is not None
    return np.round(mid, 6), None if nat is None else np.round(nat, 6), valid


class Theo:
    """The last theo refresh of a grid: each contract's theo and the series' implied CDFs."""

    def __init__(self, grid: Grid, tiles: Tiles, strategy: str) -> None:
        self.grid, self.tiles, self.strategy = grid, tiles, strategy
        n = len(grid)
        self.contract = np.full(n + 1, np.nan)  # theo per position; the sentinel leg is worth 0
        self.contract[n] = 0.0
        self.spot: float | None = None
        self.ts_ns = 0
        self.iv = np.full(n, np.nan)  # the IVs the refresh priced with
        self.table = sm.cdf_table(0.0, [])
        self.tile_theo = np.full(len(tiles), np.nan)
        self.tile_pop = np.full(len(tiles), np.nan)  # at each tile's natural debit at the last refresh
        self.tile_at = self.table.per(np.zeros(0, np.int64))  # each tile's series' table (CdfTable.per)
        self.is_call = (
            np.array([s.side == "call" for s in grid.series], bool)[tiles.series] if len(tiles) else np.zeros(0, bool)
        )
        self.strike = tiles.strike_x1000 / 1000.0
        self.width = tiles.width_x1000 / 1000.0

    def due(self, spot: float | None, ts_ns: int, step_bp: float, refresh_s: float, iv_changed: bool) -> bool:
        """Whether the next emission must re-price (module docstring)."""
        if spot is None:
            return False
        if self.spot is None or iv_changed:
            return True
        return abs(spot / self.spot - 1.0) * 1e4 >= step_bp or ts_ns - self.ts_ns >= refresh_s * 1e9

    def refresh(self, spot: float, ts_ns: int, iv: np.ndarray) -> None:
        """Re-price every contract and tile at ``spot`` and ``ts_ns`` with the smiles through ``iv``."""
        self.spot, self.ts_ns, self.iv = spot, ts_ns, iv.copy()
        per_series: list[tuple[float, sm.Smile | None]] = []
        for s in self.grid.series:
            k = s.strikes / 1000.0
            t = float(bs.years_to_expiry(expiry_close_ns(s.expiry), ts_ns))
            smile = sm.Smile.fit(k, iv[s.start : s.stop])
            if smile is not None:
                self.contract[s.start : s.stop] = np.round(sm.theo(spot, k, t, smile, s.side == "call"), 6)
            else:
                self.contract[s.start : s.stop] = np.nan
            per_series.append((t, smile))
        self.table = sm.cdf_table(spot, per_series)
        self.tile_at = self.table.per(self.tiles.series.astype(np.int64))
        if len(self.tiles):
            theo = (self.tiles.weights * self.contract[self.tiles.legs]).sum(axis=1)
            self.tile_theo = np.round(theo, THEO_DECIMALS) + 0.0  # + 0.0: no negative zero

    def pop(self, sel: np.ndarray, natural: np.ndarray) -> np.ndarray:
        """Probability of profit at expiry of the selected tiles bought at ``natural``."""
        if self.spot is None or not len(sel):
            return np.full(len(sel), np.nan)
        at = tuple(x[sel] for x in self.tile_at)
        k, w, d = self.strike[sel], self.width[sel], natural
        if self.strategy == "butterfly":  # pays between the wings less the debit
            p = self.table.lookup(at, k + w - d) - self.table.lookup(at, k - w + d)
        else:  # a long call (spread) pays above its strike plus the debit, a put (spread) below minus it
            call = self.is_call[sel]
            p = self.table.lookup(at, np.where(call, k + d, k - d))
            p = np.where(call, 1.0 - p, p)
        if self.strategy != "single":
            p = np.where(d < w, p, 0.0)
        return np.round(np.where(d <= 0, 1.0, np.clip(p, 0.0, 1.0)), POP_DECIMALS)
