"""Best butterflies: the butterflies worth buying at the price one would pay, near where dealer gravity pulls.

From one butterfly version (its columns ``value, natural, theo, pop``: agents/calc/theo.py) and the dealer
gravity in force: the tiles of the ``EXPIRIES`` nearest expiries not yet closed at the version's as-of
time, calls and puts, each costed at its **natural debit** (asks of the wings paid, bids of the body
taken). A tile is a candidate when every leg has a bid and an ask (a tile is present only then), its
natural debit is at least ``MIN_DEBIT_TICKS`` ticks of its underlying (``tick``: a 0.05 debit is often
the artefact of a 0.00 x 0.10 market, not a price anyone can pay) and below its width (it can pay), and
it has a theo. Candidates are ranked by

    composite = W_VALUE   x min(theo / natural, 1)                    what it is worth per dollar paid
              + W_REWARD  x min(reward_risk / REWARD_CAP, 1)          reward/risk at the natural debit
              + W_GRAVITY x 1 / (1 + |center - level| / em)           nearness to the gravity level
              + W_WIDTH   x 1 / (1 + |ln(width / suited)|)            a width suited to the day

``theo`` is the fly's expected payoff at expiry under the distribution its series' smile implies, so
``ev = theo - natural`` is its expected value at the price paid and ``theo / natural`` what a dollar paid
is expected to return. ``reward_risk = (width - natural) / natural``. The width suited to the day comes
from the volatility regime (schemas/levels.py): ``REGIME_WIDTH_PCT`` of spot, narrow when the VIX is
low and wide when it is high; before the first VIX value, ``WIDTH_EM`` x the expected move. The gravity
and width parts are 0 without a gravity level, or without a regime and an expected move. Ties go to the
higher expected value, then (expiry, side, strike, width) order. The first ``TOP`` are published, each
with its parts. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from marketswarm.schemas.documents import edges, spreads
from marketswarm.schemas.markettime import expiry_close_ns
from marketswarm.schemas.models import Geometry

EXPIRIES = 3
TOP = 10
MIN_DEBIT_TICKS = 2
REWARD_CAP = 9.0  # reward/risk at which the reward part is full (a debit of a tenth of the width)
REGIME_WIDTH_PCT = {"low": 0.3, "normal": 0.5, "elevated": 0.8, "high": 1.2}  # the width suited, % of spot
WIDTH_EM = 0.5  # ... without a regime: half the expected move
W_VALUE, W_REWARD, W_GRAVITY, W_WIDTH = 0.4, 0.2, 0.25, 0.15
INDEX_OPTIONS = frozenset({"SPX", "NDX", "RUT", "XSP", "VIX", "DJX", "OEX", "XEO"})


def tick(underlying: str, price: np.ndarray) -> np.ndarray:
    """The minimum price increment of a debit: index options 0.05 under 3.00 and 0.10 from there
    (Cboe's SPX/NDX rule); equity and ETF options in the penny program 0.01."""
    if underlying.upper() in INDEX_OPTIONS:
        return np.where(price < 3.0, 0.05, 0.10)
    return np.full(np.shape(price), 0.01)


def nearest_expiries(geometry: Geometry, asof_ns: int) -> list[str]:
    live = sorted({e for e in geometry.expiries if expiry_close_ns(e) > asof_ns})
    return live[:EXPIRIES]


@dataclass(frozen=True)
class Candidates:
    """The tiles of the nearest expiries: their positions (ascending), and what ranking needs of them
    that does not change within an epoch."""

    pos: np.ndarray
    mask: np.ndarray  # per position of the geometry: one of these
    strike: np.ndarray  # center
    width_x1000: np.ndarray

    @classmethod
    def of(cls, geometry: Geometry, expiries: list[str]) -> Candidates:
        wanted = np.array([e in expiries for e in geometry.expiries], bool)
        mask = wanted[geometry.series_of()] if len(wanted) else np.zeros(geometry.size, bool)
        pos = np.flatnonzero(mask)
        return cls(pos, mask, geometry.strikes_x1000()[pos] / 1000.0, geometry.widths_x1000()[pos])


def best_flies(
    geometry: Geometry,
    vals: np.ndarray,
    asof_ns: int,
    gravity: dict[str, Any] | None,
    among: Candidates | None = None,
    regime: str | None = None,
) -> list[dict[str, Any]]:
    """The top butterflies of a butterfly model (its geometry and columns) under ``gravity`` and the
    volatility ``regime``; ``among``: the nearest expiries' tiles when the caller has them already."""
    if among is None:
        among = Candidates.of(geometry, nearest_expiries(geometry, asof_ns))
    if not len(among.pos) or vals.shape[1] < 4:
        return []
    v = vals[among.pos]
    natural, theo, width = v[:, 1], v[:, 2], among.width_x1000 / 1000.0
    with np.errstate(invalid="ignore"):
        min_debit = MIN_DEBIT_TICKS * tick(geometry.underlying, natural) - 1e-9
        ok = ~np.isnan(v[:, 0]) & (natural >= min_debit) & (natural < width) & np.isfinite(theo)
    pos = among.pos[ok]
    if not len(pos):
        return []
    v, natural, theo, width, strike = v[ok], natural[ok], theo[ok], width[ok], among.strike[ok]
    rr = np.round((width - natural) / natural, 4)
    ev = np.round(theo - natural, 6)
    worth = np.minimum(theo / natural, 1.0)
    reward = np.minimum(rr / REWARD_CAP, 1.0)
    gravity = gravity or {}
    level, em = gravity.get("level"), gravity.get("em")
    if level is not None and em:
        dist_em = np.abs(strike - level) / em
        pull = 1.0 / (1.0 + dist_em)
    else:
        dist_em, pull = np.full(len(pos), np.nan), np.zeros(len(pos))
    spot = gravity.get("spot")
    suited = (
        REGIME_WIDTH_PCT[regime] / 100 * spot if regime in REGIME_WIDTH_PCT and spot else WIDTH_EM * em if em else None
    )
    fit = 1.0 / (1.0 + np.abs(np.log(width / suited))) if suited else np.zeros(len(pos))
    composite = np.round(W_VALUE * worth + W_REWARD * reward + W_GRAVITY * pull + W_WIDTH * fit, 6)
    # Only what can make the top: composite at least the TOP-th largest (ties included), then sorted.
    # Position order is (expiry, side, strike, width): a stable sort keeps it among ties.
    keep = np.arange(len(pos))
    if len(pos) > TOP:
        keep = np.flatnonzero(composite >= np.partition(composite, len(pos) - TOP)[len(pos) - TOP])
    order = keep[np.lexsort((-ev[keep], -composite[keep]))][:TOP]
    legs, series = geometry.leg_positions(), geometry.series_of()
    edge, spread = edges(v), spreads(v)
    out = []
    for i in order.tolist():
        p = int(pos[i])
        e, side = geometry.expiries[series[p]], geometry.sides[series[p]]
        k, w = int(geometry.strikes_x1000()[p]), int(geometry.widths_x1000()[p])
        out.append(
            {
                "k": f"{e}|{side[0]}|{k}|{w}",
                "expiry": e,
                "side": side,
                "strike": k / 1000,
                "width": w / 1000,
                "debit": float(natural[i]),
                "mid": float(v[i, 0]),
                "spread": float(spread[i]),
                "theo": float(theo[i]),
                "edge": float(edge[i]),
                "pop": None if np.isnan(v[i, 3]) else float(v[i, 3]),
                "ev": float(ev[i]),
                "reward_risk": float(rr[i]),
                "composite": float(composite[i]),
                "parts": {
                    "value": round(float(worth[i]), 6),
                    "reward": round(float(reward[i]), 6),
                    "gravity": round(float(pull[i]), 6),
                    "width": round(float(fit[i]), 6),
                    "gravity_distance_em": None if np.isnan(dist_em[i]) else round(float(dist_em[i]), 4),
                    "within_em": bool(em and spot is not None and abs(k / 1000 - spot) <= em),
                    "suited_width": None if suited is None else round(float(suited), 4),
                },
                "legs": [geometry.contracts[c] for c in legs[p].tolist()],
            }
        )
    return out
