"""What a trader reads off the GEX model at a glance: market mode, dealer gravity and the structure
layer of liquidity intent. Pure functions of one GEX version (its by-strike rows, spot, flip, total
and the at-the-money IV); every constant is named here and documented in the README.

Sign convention as in agents/calc/gex.py: dealers long calls and short puts, so net GEX > 0 means
dealers are long gamma (they sell rallies and buy dips: moves are damped) and < 0 short gamma (they
hedge with the move: moves are amplified).

* **Market mode.** ``distance_pct = 100 (spot - flip) / spot``. ``transition`` when a flip exists
  and ``|distance_pct| <= TRANSITION_PCT``; otherwise ``compression`` when ``total > 0``,
  ``expansion`` when ``total < 0`` (``neutral`` when it is exactly 0: no gamma). ``score = 50 + 50
  sigma tanh(|distance_pct| / SCORE_SCALE_PCT)`` with ``sigma`` the sign of ``total``: 50 at the flip,
  towards 100 the deeper into positive gamma, towards 0 the deeper into negative gamma; without a
  flip the distance is unbounded (100, 0, or 50 at zero total).
* **Dealer gravity.** ``em = spot iv_atm sqrt(1 / TRADING_DAYS)``, the one-day expected move.
  ``level``: the strike of largest positive net GEX within ``[spot - em, spot + em]`` (ties: the one
  nearest spot, then the lower). ``band``: ``[the strike at or below spot with the largest put GEX
  (most negative), the strike at or above spot with the largest call GEX]``. ``confidence``: the share
  of ``sum |net|`` within ``+/- em`` held by ``level`` and its neighbouring strikes (one strike step).
* **Intent structure.** ``G_above``/``G_below``: net GEX summed over strikes above/below spot within
  ``+/- BIAS_RANGE_PCT``; ``bias = 100 (G_above + G_below) / (|G_above| + |G_below|)``. ``pin = 100
  sum|net| within +/- PIN_NEAR_PCT / sum|net| within +/- PIN_FAR_PCT`` (absolute values, so 0..100).
  Quadrant, from the sign of bias and ``pin >= PIN_HIGH``: positive and concentrated is
  ``pin/mean-reversion`` (long gamma right at spot holds price); positive and spread out is
  ``false-breakout risk`` (moves start, then meet long gamma further out and fade); negative and
  concentrated is ``downside acceleration`` (short gamma at spot: hedging chases the move, puts make
  it worst on the way down); negative and spread out is ``air-pocket expansion`` (nothing holds price).
* **Volatility regime.** From the volatility index (VIX, an input like spot): ``low`` under 17,
  ``normal`` from 17 to under 23, ``elevated`` from 23 to under 32, ``high`` from 32 (``VOL_REGIMES``).
  The heatmaps, GEX, market mode and best flies carry it as ``vix`` and ``regime`` (null before the
  first value); best flies choose widths by it (agents/derive/flies.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from marketswarm.schemas.events import VolChange

TRANSITION_PCT = 0.5  # market mode: |spot - flip| / spot within this (%) is a transition
SCORE_SCALE_PCT = 2.0  # market mode: distance from the flip (%) at which the score is 50 +/- 38
TRADING_DAYS = 252  # gravity: the expected move covers one of this many trading days a year
BIAS_RANGE_PCT = 2.0  # intent structure: strikes within this (%) of spot make G_above and G_below
PIN_NEAR_PCT = 1.0  # intent structure: the concentration near spot ...
PIN_FAR_PCT = 5.0  # ... against this wider range
PIN_HIGH = 50.0  # intent structure: pin at or above this is concentrated

QUADRANTS = {
    (True, True): "pin/mean-reversion",
    (True, False): "false-breakout risk",
    (False, True): "downside acceleration",
    (False, False): "air-pocket expansion",
}


@dataclass(frozen=True)
class GexRows:
    """A GEX version's rows by strike (ascending) and the header fields the models use."""

    strike: np.ndarray
    call: np.ndarray
    put: np.ndarray
    net: np.ndarray
    spot: float
    flip: float | None
    total: float
    iv_atm: float | None

    @classmethod
    def of(cls, header: dict[str, Any], strike: np.ndarray, vals: np.ndarray) -> GexRows:
        """From a GEX model: its header and (strike, [call, put, net]) rows; absent rows (NaN) dropped."""
        keep = ~np.isnan(vals[:, 0]) if len(vals) else np.zeros(0, bool)
        return cls(
            strike=np.asarray(strike, np.float64)[keep],
            call=vals[keep, 0],
            put=vals[keep, 1],
            net=vals[keep, 2],
            spot=float(header["spot"]),
            flip=header.get("flip"),
            total=float(header.get("total") or 0.0),
            iv_atm=header.get("iv_atm"),
        )


def _r(x: float, nd: int = 2) -> float:
    return round(float(x), nd)


def market_mode(g: GexRows) -> dict[str, Any]:
    sigma = (g.total > 0) - (g.total < 0)
    if g.flip is None:
        distance = None
        mode = {1: "compression", -1: "expansion", 0: "neutral"}[sigma]
        score = 50.0 + 50.0 * sigma
    else:
        distance = 100.0 * (g.spot - g.flip) / g.spot
        if abs(distance) <= TRANSITION_PCT:
            mode = "transition"
        else:
            mode = {1: "compression", -1: "expansion", 0: "neutral"}[sigma]
        score = 50.0 + 50.0 * sigma * math.tanh(abs(distance) / SCORE_SCALE_PCT)
    return {
        "mode": mode,
        "score": _r(score),
        "spot": g.spot,
        "flip": g.flip,
        "total": g.total,
        "distance_pct": None if distance is None else _r(distance, 4),
    }


def _pick(strikes: np.ndarray, values: np.ndarray, spot: float) -> float | None:
    """The strike of the largest value (ties: nearest spot, then the lower); None when none."""
    if not len(strikes):
        return None
    best = values.max()
    tied = strikes[values == best]
    return float(min(tied, key=lambda k: (abs(k - spot), k)))


def gravity(g: GexRows) -> dict[str, Any]:
    s = g.spot
    em = None if g.iv_atm is None else s * g.iv_atm * math.sqrt(1.0 / TRADING_DAYS)
    level = confidence = None
    if em is not None:
        inside = (g.strike >= s - em) & (g.strike <= s + em)
        positive = inside & (g.net > 0)
        level = _pick(g.strike[positive], g.net[positive], s)
        whole = float(np.abs(g.net[inside]).sum())
        if level is not None and whole > 0:
            at = int(np.flatnonzero(g.strike == level)[0])
            near = np.zeros(len(g.strike), bool)
            near[max(0, at - 1) : at + 2] = True
            confidence = _r(float(np.abs(g.net[inside & near]).sum()) / whole, 4)
    below = (g.strike <= s) & (g.put < 0)
    above = (g.strike >= s) & (g.call > 0)
    band = [_pick(g.strike[below], -g.put[below], s), _pick(g.strike[above], g.call[above], s)]
    return {
        "level": level,
        "band": band,
        "confidence": confidence,
        "em": None if em is None else _r(em, 4),
        "iv_atm": g.iv_atm,
        "spot": s,
    }


def structure(g: GexRows) -> dict[str, Any]:
    s = g.spot
    dist = np.abs(g.strike - s) / s * 100.0
    near = dist <= BIAS_RANGE_PCT
    g_above = float(g.net[near & (g.strike > s)].sum())
    g_below = float(g.net[near & (g.strike < s)].sum())
    scale = abs(g_above) + abs(g_below)
    bias = None if scale == 0 else _r(100.0 * (g_above + g_below) / scale)
    far = float(np.abs(g.net[dist <= PIN_FAR_PCT]).sum())
    pin = None if far == 0 else _r(100.0 * float(np.abs(g.net[dist <= PIN_NEAR_PCT]).sum()) / far)
    quadrant = None if bias is None or pin is None else QUADRANTS[(bias > 0, pin >= PIN_HIGH)]
    return {"bias": bias, "pin": pin, "quadrant": quadrant, "g_above": _r(g_above), "g_below": _r(g_below)}


VOL_REGIMES = ((17.0, "low"), (23.0, "normal"), (32.0, "elevated"), (math.inf, "high"))


def regime(vix: float | None) -> str | None:
    """The volatility regime of a VIX level (``VOL_REGIMES``); None without one."""
    if vix is None:
        return None
    return next(name for top, name in VOL_REGIMES if vix < top)


def vol_fields(v: VolChange | None) -> dict[str, Any]:
    """A model header's volatility fields: the VIX level and its regime (null before the first)."""
    return {"vix": None if v is None else v.value, "regime": regime(None if v is None else v.value)}
