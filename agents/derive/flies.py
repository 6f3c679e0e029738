"""Best butterflies: the butterfly heatmap's cheapest structures near where dealer gravity pulls.

From one butterfly version and the dealer gravity in force: the tiles of the ``EXPIRIES`` nearest
expiries not yet closed at the version's as-of time, calls and puts, with every leg quoted (a tile is
present only then) and ``0 < debit <= MAX_DEBIT_FRACTION x width``, ranked by

    composite = W_REWARD x min(reward_risk / REWARD_CAP, 1)
              + W_GRAVITY x 1 / (1 + |center - level| / em)
              + W_WITHIN x (|center - spot| <= em)

with ``reward_risk = (width - debit) / debit`` (the tile's score). The gravity part is 0 without a
gravity level, the within part 0 without an expected move. Ties go to the higher reward/risk, then
(expiry, side, strike, width) order. The first ``TOP`` are published. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from marketswarm.schemas.documents import scores
from marketswarm.schemas.markettime import expiry_close_ns
from marketswarm.schemas.models import Geometry

EXPIRIES = 3
TOP = 10
MAX_DEBIT_FRACTION = 0.10
REWARD_CAP = 50.0  # reward/risk at which the reward part is full
W_REWARD, W_GRAVITY, W_WITHIN = 0.5, 0.3, 0.2


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
) -> list[dict[str, Any]]:
    """The top butterflies of a butterfly model (its geometry and value column) under ``gravity``;
    ``among``: the nearest expiries' tiles when the caller has them already."""
    if among is None:
        among = Candidates.of(geometry, nearest_expiries(geometry, asof_ns))
    if not len(among.pos):
        return []
    debit = vals[among.pos, 0]
    with np.errstate(invalid="ignore"):
        ok = (debit > 0) & (debit <= MAX_DEBIT_FRACTION * (among.width_x1000 / 1000.0))
    pos = among.pos[ok]
    if not len(pos):
        return []
    debit, strike = debit[ok], among.strike[ok]
    rr = scores(debit, among.width_x1000[ok])
    gravity = gravity or {}
    level, em, spot = gravity.get("level"), gravity.get("em"), gravity.get("spot")
    reward = np.minimum(rr / REWARD_CAP, 1.0)
    if level is not None and em:
        dist_em = np.abs(strike - level) / em
        pull = 1.0 / (1.0 + dist_em)
    else:
        dist_em = np.full(len(pos), np.nan)
        pull = np.zeros(len(pos))
    within = (np.abs(strike - spot) <= em) if em and spot is not None else np.zeros(len(pos), bool)
    composite = np.round(W_REWARD * reward + W_GRAVITY * pull + W_WITHIN * within, 6)
    # Only what can make the top: composite at least the TOP-th largest (ties included), then sorted.
    # Position order is (expiry, side, strike, width): a stable sort keeps it among ties.
    keep = np.arange(len(pos))
    if len(pos) > TOP:
        keep = np.flatnonzero(composite >= np.partition(composite, len(pos) - TOP)[len(pos) - TOP])
    order = keep[np.lexsort((-rr[keep], -composite[keep]))][:TOP]
    legs, series = geometry.leg_positions(), geometry.series_of()
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
                "debit": float(debit[i]),
                "reward_risk": float(rr[i]),
                "composite": float(composite[i]),
                "parts": {
                    "reward": round(float(reward[i]), 6),
                    "gravity_distance_em": None if np.isnan(dist_em[i]) else round(float(dist_em[i]), 4),
                    "within_em": bool(within[i]),
                },
                "legs": [geometry.contracts[c] for c in legs[p].tolist()],
            }
        )
    return out
