"""A position's risk graph: P&L at expiry and before it, breakevens, the extremes, the probability of profit,
the expected P&L and the expected move. Pure: no I/O (the gateway's ``/api/risk`` reads the inputs).

Legs are contracts with signed quantities. "At expiry" is the first leg's expiry: legs expiring then are
worth their intrinsic value, later ones their Black-Scholes value on their series' smile held where it is
(sticky strike), as are all legs at the times before it. The entry price is the natural debit (asks paid,
bids taken), the mid, or a given debit. Prices and P&L are in points per unit of the position; ``usd``
multiplies by the contract multiplier. With every leg in one expiry the P&L at expiry is piecewise linear
with kinks at the strikes, so breakevens and extremes are exact (an extreme is None when unbounded);
with later legs they are read off a fine grid of prices.

The probability of profit and the expected P&L are under the distribution the first expiry's smile
implies (schemas/smile.py): the legs' own series' smile when they are all calls or all puts, else the
out-of-the-money smile (puts below spot, calls above), the one the market trades most. The expected
move is one standard deviation to that expiry at the smile's at-the-money volatility.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from marketswarm.schemas import blackscholes as bs
from marketswarm.schemas import smile as sm
from marketswarm.schemas.markettime import expiry_close_ns

GRID_POINTS = 401
GRID_SDS = 4.0  # the graph spans spot x exp(+-GRID_SDS x sigma sqrt(t)) and every strike given
HOUR_YEARS = 3600.0 / bs.SECONDS_PER_YEAR


@dataclass(frozen=True)
class Leg:
    symbol: str
    qty: int  # bought +, sold -
    expiry: str
    is_call: bool
    strike: float
    bid: float | None
    ask: float | None
    smile: sm.Smile  # its series' smile


def _value(leg: Leg, x: np.ndarray, t: float) -> np.ndarray:
    """A leg's worth at underlying ``x`` with ``t`` years left (intrinsic at t <= 0)."""
    if t <= 0:
        return np.maximum(x - leg.strike, 0.0) if leg.is_call else np.maximum(leg.strike - x, 0.0)
    return bs.price(x, leg.strike, t, 0.0, leg.smile.at(np.array([leg.strike]))[0], leg.is_call)


def pnl(legs: list[Leg], x: np.ndarray, left: dict[str, float], paid: float) -> np.ndarray:
    """The position's P&L per unit at underlying ``x``, each leg with ``left[symbol]`` years to go."""
    out = np.full(len(x), -paid)
    for leg in legs:
        out += leg.qty * _value(leg, x, left[leg.symbol])
    return out


def entry_prices(legs: list[Leg]) -> dict[str, float | None]:
    """The position's natural debit (asks of what is bought, bids of what is sold) and mid, per unit."""
    nat = mid = 0.0
    for leg in legs:
        if not (leg.bid and leg.ask and leg.bid > 0 and leg.ask > 0 and leg.bid <= leg.ask):
            return {"natural": None, "mid": None}
        nat += leg.qty * (leg.ask if leg.qty > 0 else leg.bid)
        mid += leg.qty * (leg.bid + leg.ask) / 2
    return {"natural": round(nat, 6), "mid": round(mid, 6)}


def _exact(legs: list[Leg], debit: float) -> tuple[list[float], float | None, float | None, np.ndarray, np.ndarray]:
    """Every leg expiring together: (breakevens, max profit, max loss, kink prices, P&L there)."""
    ks = np.unique(np.array([0.0] + [leg.strike for leg in legs]))
    at = pnl(legs, ks, dict.fromkeys((leg.symbol for leg in legs), 0.0), debit)
    right = float(sum(leg.qty for leg in legs if leg.is_call))  # the slope beyond the last strike
    bes: list[float] = []
    for i in range(len(ks) - 1):
        a, b = at[i], at[i + 1]
        if a == 0 and i > 0:
            bes.append(float(ks[i]))
        elif a * b < 0:
            bes.append(float(ks[i] + (ks[i + 1] - ks[i]) * a / (a - b)))
    last = at[-1]
    if last == 0 and len(ks) > 1:
        bes.append(float(ks[-1]))
    elif right and last * right < 0:
        bes.append(float(ks[-1] - last / right))
    top, bottom = float(at.max()), float(at.min())
    return bes, None if right > 0 else top, None if right < 0 else bottom, ks, at


def _regions(x: np.ndarray, pnl: np.ndarray, bes: list[float]) -> list[tuple[float, float]]:
    """Where P&L at expiry is positive, as [lo, hi] intervals (hi = inf beyond the last breakeven)."""
    edges = [0.0, *bes, np.inf]
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        probe = (lo + hi) / 2 if np.isfinite(hi) else max(lo * 1.5, lo + 1.0)
        if np.interp(probe, x, pnl) > 0 if probe <= x[-1] else pnl[-1] > 0:
            out.append((lo, float(hi)))
    return out


def analyse(
    legs: list[Leg],
    spot: float,
    asof_ns: int,
    density: sm.Smile,
    *,
    debit: float | None = None,
    before_hours: tuple[float, ...] = (),
    strikes: np.ndarray | None = None,
    multiplier: int = 100,
) -> dict[str, Any]:
    """The risk graph of ``legs`` at ``spot`` and event time ``asof_ns`` (module docstring); ``debit``
    per unit (None: the natural debit); ``strikes``: prices the graph must include (a series' strikes)."""
    prices = entry_prices(legs)
    paid = prices["natural"] if debit is None else debit
    if paid is None:
        raise ValueError("a leg has no two-sided quote: give the debit to price the position at")
    first = min(leg.expiry for leg in legs)
    close = expiry_close_ns(first)
    t1 = float(bs.years_to_expiry(close, asof_ns))
    later = {leg.symbol: (expiry_close_ns(leg.expiry) - close) / 1e9 / bs.SECONDS_PER_YEAR for leg in legs}
    sd = float(density.at(np.array([spot]))[0]) * np.sqrt(t1)
    span = spot * np.exp(np.linspace(-GRID_SDS, GRID_SDS, GRID_POINTS) * max(sd, 0.005))
    extra = [leg.strike for leg in legs] + ([] if strikes is None else list(strikes))
    x = np.unique(np.concatenate([span, np.array(extra, float)]))

    def pnl_at(left: float) -> np.ndarray:  # ``left``: years to the first expiry's close
        return pnl(legs, x, {s: left + t for s, t in later.items()}, paid)

    at_expiry = pnl_at(0.0)
    if all(leg.expiry == first for leg in legs):
        bes, top, bottom, _, _ = _exact(legs, paid)
    else:
        s = np.sign(at_expiry)
        cross = np.flatnonzero(s[:-1] * s[1:] < 0)
        bes = [float(x[i] + (x[i + 1] - x[i]) * at_expiry[i] / (at_expiry[i] - at_expiry[i + 1])) for i in cross]
        top, bottom = float(at_expiry.max()), float(at_expiry.min())
    regions = _regions(x, at_expiry, bes)

    def cdf(v: float) -> float:
        return 1.0 if not np.isfinite(v) else float(sm.cdf(spot, np.array([v]), t1, density)[0])

    pop = sum((cdf(hi) - cdf(lo) for lo, hi in regions), 0.0)
    # Expected P&L: the P&L at expiry against the implied distribution, on a fine log-spaced grid.
    fine = sm.table_points(spot, t1, density)
    f = sm.cdf(spot, fine, t1, density)
    mids = (fine[1:] + fine[:-1]) / 2
    pnl_mid = pnl(legs, mids, later, paid)
    pnl_ends = pnl(legs, fine[[0, -1]], later, paid)
    expected = float((pnl_mid * np.diff(f)).sum() + pnl_ends[0] * f[0] + pnl_ends[1] * (1 - f[-1]))
    curves = [{"label": "now", "hours_before": round(t1 / HOUR_YEARS, 4), "pnl": np.round(pnl_at(t1), 6).tolist()}]
    for h in before_hours:
        if 0 < h * HOUR_YEARS < t1:
            curves.append(
                {
                    "label": f"{h:g} h before expiry",
                    "hours_before": h,
                    "pnl": np.round(pnl_at(h * HOUR_YEARS), 6).tolist(),
                }
            )
    theo = sum(leg.qty * float(_value(leg, np.array([spot]), t1 + later[leg.symbol])[0]) for leg in legs)

    def usd(v: float | None) -> float | None:
        return None if v is None else round(v * multiplier, 2)

    em = spot * sd
    return {
        "expiry": first,
        "years_to_expiry": t1,
        "spot": spot,
        "asof_ns": asof_ns,
        "multiplier": multiplier,
        "basis": "natural" if debit is None else "given",
        "debit": round(paid, 6),
        "natural": prices["natural"],
        "mid": prices["mid"],
        "theo": round(theo, 6),
        "x": np.round(x, 6).tolist(),
        "expiry_pnl": np.round(at_expiry, 6).tolist(),
        "curves": curves,
        "breakevens": [round(b, 4) for b in bes],
        "max_profit": None if top is None else round(top, 6),
        "max_loss": None if bottom is None else round(bottom, 6),
        "max_profit_usd": usd(top),
        "max_loss_usd": usd(bottom),
        "pop": round(min(max(pop, 0.0), 1.0), 4),
        "expected_pnl": round(expected, 6),
        "expected_pnl_usd": usd(expected),
        "expected_move": {"points": round(em, 4), "low": round(spot - em, 4), "high": round(spot + em, 4)},
        "distribution": "implied by the first expiry's smile (Breeden-Litzenberger on its Black-Scholes prices)",
    }
