"""Black-Scholes prices and greeks, vectorized over numpy arrays. The one place this math lives.

Units: ``t`` in years, ``r`` and ``q`` continuously compounded per year, ``sigma`` per sqrt(year).
Greeks per 1.00: delta per 1.00 of the underlying, gamma per 1.00 squared (the greeks the simulator
and GEX use). Checked against Hull's worked examples and py_vollib's 101-row table.

Time to expiry (our convention, used by the simulator and GEX): calendar time from the event time to
the expiry date's 16:00 America/New_York close, ACT/365, floored at ``MIN_T_YEARS`` so that a 0DTE
contract in its last minutes keeps a finite gamma. AM-settled series are treated as PM (a few hours'
difference on expiry day only).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtr

F = NDArray[np.float64]
SECONDS_PER_YEAR = 365.0 * 86400.0
MIN_T_YEARS = 60.0 / SECONDS_PER_YEAR  # one minute
_SQRT_2PI = np.sqrt(2.0 * np.pi)


def _pdf(x: F) -> F:
    return np.exp(-0.5 * x * x) / _SQRT_2PI  # type: ignore[no-any-return]


def d1_d2(s: ArrayLike, k: ArrayLike, t: ArrayLike, r: ArrayLike, sigma: ArrayLike, q: ArrayLike = 0.0) -> tuple[F, F]:
    s_, k_, t_, r_, v_, q_ = (np.asarray(x, dtype=np.float64) for x in (s, k, t, r, sigma, q))
    vs = v_ * np.sqrt(t_)
    with np.errstate(divide="ignore", invalid="ignore"):
        d1 = (np.log(s_ / k_) + (r_ - q_ + 0.5 * v_ * v_) * t_) / vs
    return d1, d1 - vs


def price(
    s: ArrayLike, k: ArrayLike, t: ArrayLike, r: ArrayLike, sigma: ArrayLike, is_call: ArrayLike, q: ArrayLike = 0.0
) -> F:
    d1, d2 = d1_d2(s, k, t, r, sigma, q)
    s_, k_, t_, r_, q_ = (np.asarray(x, dtype=np.float64) for x in (s, k, t, r, q))
    call = np.asarray(is_call, dtype=bool)
    df_q, df_r = np.exp(-q_ * t_), np.exp(-r_ * t_)
    c = s_ * df_q * ndtr(d1) - k_ * df_r * ndtr(d2)
    p = k_ * df_r * ndtr(-d2) - s_ * df_q * ndtr(-d1)
    return np.where(call, c, p)  # type: ignore[no-any-return]


def delta(
    s: ArrayLike, k: ArrayLike, t: ArrayLike, r: ArrayLike, sigma: ArrayLike, is_call: ArrayLike, q: ArrayLike = 0.0
) -> F:
    d1, _ = d1_d2(s, k, t, r, sigma, q)
    df_q = np.exp(-np.asarray(q, dtype=np.float64) * np.asarray(t, dtype=np.float64))
    return np.where(np.asarray(is_call, dtype=bool), df_q * ndtr(d1), df_q * (ndtr(d1) - 1.0))  # type: ignore[no-any-return]


def gamma(s: ArrayLike, k: ArrayLike, t: ArrayLike, r: ArrayLike, sigma: ArrayLike, q: ArrayLike = 0.0) -> F:
    """Per 1.00 of the underlying; the same for calls and puts. 0 where sigma or t is not positive."""
    d1, _ = d1_d2(s, k, t, r, sigma, q)
    s_, t_, v_, q_ = (np.asarray(x, dtype=np.float64) for x in (s, t, sigma, q))
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.exp(-q_ * t_) * _pdf(d1) / (s_ * v_ * np.sqrt(t_))
    return np.where((v_ > 0) & (t_ > 0) & np.isfinite(g), g, 0.0)


def years_to_expiry(expiry_close: ArrayLike, now_ns: int) -> F:
    """Our time-to-expiry convention (module docstring), vectorized over expiry close times in ns."""
    t = (np.asarray(expiry_close, dtype=np.float64) - float(now_ns)) / 1e9 / SECONDS_PER_YEAR
    return np.maximum(t, MIN_T_YEARS)
