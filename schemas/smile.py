"""The volatility smile of a series and the distribution its prices imply: theo, CDF, probability of profit.

A smile is fitted per series (one expiry, one side) through the chain's implied volatilities by strike:
a monotone cubic (PCHIP) through the strikes that have one, held flat beyond the first and the last.
PCHIP has a continuous first derivative and never overshoots between strikes, so the prices it gives
are smooth in the strike and the density below has no spikes at the knots; at a strike with an IV the
smile is that IV, so a single's theo is Black-Scholes with the chain's IV for it.

The implied distribution is the one the smile's own prices imply (Breeden-Litzenberger): with r = 0
(our Black-Scholes convention, schemas/blackscholes.py), ``C(K) = E[(S_T - K)+]`` and so

    P(S_T <= K) = 1 + dC/dK = N(-d2) + S phi(d1) sqrt(t) sigma'(K)

(the same for puts, by parity), the second term being the smile's skew. It is taken from the smile, not
from finite differences of the chain's prices: those are quotes, with spreads and stale marks that make
a density negative; the smile interpolates the chain's IVs between strikes instead. The expected payoff
of a structure under this distribution is its theo, so a structure's expected value at the price one
pays is ``theo - debit``. The smile goes through every IV the chain gives; it is not fitted to smooth
their noise away: where the IVs are noisy (quotes, rounding), the density it implies is negative over a
few points, and a probability over a short interval is clipped to [0, 1] rather than the chain made to
say something else. The CDF is tabulated on ``TABLE_POINTS`` points evenly spaced in price (clipped to
[0, 1]) and read by linear interpolation; several series' tables go in one array, so one lookup serves
tiles of every series at once (a calc reads it for every changed tile). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.special import ndtr

from marketswarm.schemas import blackscholes as bs

TABLE_POINTS = 2049
TABLE_SDS = 8.0  # the table spans spot x exp(+-TABLE_SDS x sigma sqrt(t))
_SQRT_2PI = np.sqrt(2.0 * np.pi)


@dataclass(frozen=True)
class Smile:
    """Implied volatility by strike for one series: ``at(k)`` and its slope ``slope(k)``."""

    strikes: np.ndarray  # the knots: strikes with an IV, ascending
    ivs: np.ndarray

    @classmethod
    def fit(cls, strikes: np.ndarray, ivs: np.ndarray) -> Smile | None:
        """Through the strikes whose IV is a positive number; None when none has one."""
        ok = np.isfinite(ivs) & (ivs > 0) & np.isfinite(strikes)
        if not ok.any():
            return None
        k, v = np.asarray(strikes, float)[ok], np.asarray(ivs, float)[ok]
        order = np.argsort(k, kind="stable")
        k, v = k[order], v[order]
        keep = np.concatenate([[True], np.diff(k) > 0])  # one IV per strike: the first
        return cls(k[keep], v[keep])

    @cached_property
    def _pchip(self) -> PchipInterpolator | None:
        return PchipInterpolator(self.strikes, self.ivs, extrapolate=False) if len(self.strikes) > 1 else None

    def at(self, k: np.ndarray) -> np.ndarray:
        k = np.asarray(k, float)
        p = self._pchip
        if p is None:
            return np.full(k.shape, self.ivs[0])
        return np.asarray(p(np.clip(k, self.strikes[0], self.strikes[-1])))

    def slope(self, k: np.ndarray) -> np.ndarray:
        k = np.asarray(k, float)
        p = self._pchip
        if p is None:
            return np.zeros(k.shape)
        inside = (k > self.strikes[0]) & (k < self.strikes[-1])
        return np.where(inside, np.nan_to_num(p.derivative()(np.clip(k, self.strikes[0], self.strikes[-1]))), 0.0)


def theo(spot: float, strikes: np.ndarray, t: float, smile: Smile, is_call: np.ndarray | bool) -> np.ndarray:
    """Black-Scholes prices on the smile (r = q = 0): a contract's theoretical value."""
    return bs.price(spot, strikes, t, 0.0, smile.at(strikes), is_call)


def cdf(spot: float, x: np.ndarray, t: float, smile: Smile) -> np.ndarray:
    """P(S_T <= x) under the smile's implied distribution (module docstring), clipped to [0, 1]."""
    x = np.asarray(x, float)
    sigma = smile.at(x)
    sq = np.sqrt(t)
    with np.errstate(divide="ignore", invalid="ignore"):
        d1 = (np.log(spot / x) + 0.5 * sigma * sigma * t) / (sigma * sq)
        p = ndtr(-(d1 - sigma * sq)) + spot * np.exp(-0.5 * d1 * d1) / _SQRT_2PI * sq * smile.slope(x)
    p = np.where(x <= 0, 0.0, p)
    return np.asarray(np.clip(np.nan_to_num(p, nan=0.0), 0.0, 1.0))


@dataclass(frozen=True)
class CdfTable:
    """CDFs of several series in one array, each on ``TABLE_POINTS`` points evenly spaced in price, so a
    lookup is arithmetic, not a search: series ``i`` starts at ``base[i]``, at price ``x0[i]``, every
    ``1 / inv_dx[i]``. ``per(series)`` gathers those for many lookups of the same series at once."""

    p: np.ndarray  # every series' table, one after another
    x0: np.ndarray  # per series (NaN: the series has no smile)
    inv_dx: np.ndarray
    base: np.ndarray  # int64

    def per(self, series: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.x0[series], self.inv_dx[series], self.base[series]

    def lookup(self, at: tuple[np.ndarray, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
        """P(S_T <= x) with ``at`` from ``per`` (linear between points; 0 below the table, 1 above; NaN
        for a series without one)."""
        x0, inv_dx, base = at
        if not len(self.p):
            return np.full(len(x), np.nan)
        with np.errstate(invalid="ignore"):
            u = np.clip((x - x0) * inv_dx, 0.0, TABLE_POINTS - 1.000001)
        u = np.nan_to_num(u)
        i = u.astype(np.int64)
        f = u - i
        j = base + i
        out = self.p[j] * (1.0 - f) + self.p[j + 1] * f
        return np.where(np.isnan(x0) | np.isnan(x), np.nan, out)

    def at(self, series: np.ndarray, x: np.ndarray) -> np.ndarray:
        """P(S_T <= x) for each (series, x) pair; NaN for a series without a table."""
        return self.lookup(self.per(series), x)


def table_points(spot: float, t: float, smile: Smile) -> np.ndarray:
    """Where a series' CDF is known to matter: ``TABLE_POINTS`` points over +-TABLE_SDS standard
    deviations around spot in log price (beyond them it is 0 or 1 to many decimals)."""
    sd = float(smile.at(np.array([spot]))[0]) * np.sqrt(t)
    return np.asarray(spot * np.exp(np.linspace(-TABLE_SDS, TABLE_SDS, TABLE_POINTS) * sd))


def cdf_table(spot: float, series: list[tuple[float, Smile | None]]) -> CdfTable:
    """One table for series given as (t in years, smile or None): each evenly spaced in price over the
    span ``table_points`` gives."""
    ps: list[np.ndarray] = []
    x0s: list[float] = []
    invs: list[float] = []
    bases: list[int] = []
    for t, smile in series:
        if smile is None:
            x0s.append(np.nan)
            invs.append(np.nan)
            bases.append(0)
            continue
        span = table_points(spot, t, smile)
        x = np.linspace(span[0], span[-1], TABLE_POINTS)
        bases.append(len(ps) * TABLE_POINTS)
        ps.append(cdf(spot, x, t, smile))
        x0s.append(float(x[0]))
        invs.append((TABLE_POINTS - 1) / (float(x[-1]) - float(x[0])) if x[-1] > x[0] else 0.0)
    p = np.concatenate(ps) if ps else np.zeros(0)
    return CdfTable(p, np.array(x0s, float), np.array(invs, float), np.array(bases, np.int64))
