"""Market mode, dealer gravity and intent structure, list in, list out, against hand-computed values."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest

from marketswarm.agents.calc.gex import Book, atm_iv
from marketswarm.schemas.levels import GexRows, gravity, market_mode, structure


def rows(
    by: dict[float, tuple[float, float]], spot: float = 100.0, flip: float | None = None, iv: float | None = None
) -> GexRows:
    """GEX rows from {strike: (call, put)}; net = call + put, total = the sum."""
    k = np.array(sorted(by), float)
    call = np.array([by[x][0] for x in k])
    put = np.array([by[x][1] for x in k])
    return GexRows(k, call, put, call + put, spot, flip, float((call + put).sum()), iv)


def mode_of(spot: float, flip: float | None, total: float) -> dict[str, object]:
    return market_mode(GexRows(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), spot, flip, total, None))


def test_market_mode_near_the_flip_is_a_transition_whatever_the_sign() -> None:
    m = mode_of(100.0, 99.6, 5e9)
    assert m["mode"] == "transition" and m["distance_pct"] == 0.4
    assert m["score"] == round(50 + 50 * math.tanh(0.4 / 2), 2) == 59.87
    assert mode_of(100.0, 100.5, -1.0)["mode"] == "transition"  # exactly 0.5 % away
    at = mode_of(100.0, 100.0, 3.0)
    assert at["mode"] == "transition" and at["score"] == 50.0 and at["distance_pct"] == 0.0


def test_market_mode_away_from_the_flip_follows_the_sign_of_net_gex() -> None:
    up = mode_of(100.0, 97.0, 2e9)
    assert (up["mode"], up["score"], up["distance_pct"]) == ("compression", 95.26, 3.0)  # 50 + 50 tanh(1.5)
    down = mode_of(100.0, 103.0, -2e9)
    assert (down["mode"], down["score"], down["distance_pct"]) == ("expansion", 4.74, -3.0)
    assert mode_of(100.0, 101.0, 1.0)["score"] < up["score"]  # monotone in the distance


def test_market_mode_without_a_flip() -> None:
    assert mode_of(100.0, None, -5.0) == {
        "mode": "expansion", "score": 0.0, "spot": 100.0, "flip": None, "total": -5.0, "distance_pct": None,
    }  # fmt: skip
    assert (mode_of(100.0, None, 5.0)["mode"], mode_of(100.0, None, 5.0)["score"]) == ("compression", 100.0)
    assert (mode_of(100.0, None, 0.0)["mode"], mode_of(100.0, None, 0.0)["score"]) == ("neutral", 50.0)


# strike: (call GEX, put GEX); net 90: -15, 95: -10, 100: -3, 105: 10, 110: 50
BOOK = {90.0: (5.0, -20.0), 95.0: (10.0, -20.0), 100.0: (2.0, -5.0), 105.0: (10.0, 0.0), 110.0: (50.0, 0.0)}


def test_gravity_level_band_and_confidence() -> None:
    by = dict(BOOK) | {95.0: (30.0, -20.0)}  # net 95: +10, tied with 105 at +10
    g = gravity(rows(by, iv=0.8))
    em = 100 * 0.8 * math.sqrt(1 / 252)
    assert g["em"] == round(em, 4) == 5.0395  # [94.96, 105.04]: strikes 95, 100, 105
    assert g["level"] == 95.0  # the tie 95/105 is equally near spot: the lower
    # |net| within em: 10 + 3 + 10 = 23; at 95 and its neighbours within em (100): 10 + 3
    assert g["confidence"] == round(13 / 23, 4) == 0.5652
    # puts at or below spot: 90 and 95 tie at -20: the nearer spot; calls at or above: 110
    assert g["band"] == [95.0, 110.0]
    assert g["iv_atm"] == 0.8 and g["spot"] == 100.0


def test_gravity_without_positive_gex_in_range_or_without_iv() -> None:
    g = gravity(rows(BOOK, iv=0.4))  # em 2.52: only 100 (net -3)
    assert g["level"] is None and g["confidence"] is None and g["em"] == 2.5198
    assert g["band"] == [95.0, 110.0]
    none = gravity(rows(BOOK))
    assert none["em"] is None and none["level"] is None and none["iv_atm"] is None
    empty = gravity(rows({}, iv=0.2))
    assert empty["band"] == [None, None] and empty["level"] is None


def test_intent_structure_bias_pin_and_quadrant() -> None:
    nets = {97.0: 7, 98.0: -4, 99.0: -2, 100.0: 5, 101.0: 3, 102.0: 1, 103.0: 8, 104.0: -6, 106.0: 100}
    s = structure(rows({k: (float(v), 0.0) for k, v in nets.items()}))
    # within 2 %: above 101, 102 (3 + 1 = 4); below 98, 99 (-4 - 2 = -6); the strike at spot in neither
    assert (s["g_above"], s["g_below"]) == (4.0, -6.0)
    assert s["bias"] == 100 * (4 - 6) / (4 + 6) == -20.0
    # sum |net| within 1 %: 2 + 5 + 3 = 10; within 5 %: 7+4+2+5+3+1+8+6 = 36 (106 is 6 % away)
    assert s["pin"] == round(100 * 10 / 36, 2) == 27.78
    assert s["quadrant"] == "air-pocket expansion"


@pytest.mark.parametrize(
    ("nets", "quadrant"),
    [
        ({99.5: 10, 100.5: 10}, "pin/mean-reversion"),
        ({99.5: 1, 101.5: 1, 104.0: 50}, "false-breakout risk"),
        ({99.5: -10, 100.5: -10}, "downside acceleration"),
        ({99.5: -1, 101.5: -1, 104.0: -50}, "air-pocket expansion"),
    ],
)
def test_each_quadrant(nets: dict[float, float], quadrant: str) -> None:
    assert structure(rows({k: (v, 0.0) for k, v in nets.items()}))["quadrant"] == quadrant


def test_structure_without_gex_near_spot() -> None:
    s = structure(rows({120.0: (5.0, 0.0)}))
    assert s["bias"] is None and s["pin"] is None and s["quadrant"] is None


def test_atm_iv_is_the_nearest_expiry_interpolated_between_the_strikes_around_spot() -> None:
    now = int(dt.datetime(2025, 1, 9, 15, 0, tzinfo=dt.UTC).timestamp() * 1e9)
    near, far = "250110", "250117"
    syms = [f"SPXW{near}C00095000", f"SPXW{near}P00095000", f"SPXW{near}C00105000", f"SPXW{far}C00100000"]
    book = Book.of("e", syms)
    book.iv[:] = [0.20, 0.24, 0.18, 0.90]  # 95: mean(0.20, 0.24) = 0.22; 105: the call's 0.18
    assert atm_iv(book, 100.0, now) == pytest.approx(0.20)  # halfway between 0.22 and 0.18
    assert atm_iv(book, 90.0, now) == pytest.approx(0.22)  # outside the strikes: the nearest one's
    expired = int(dt.datetime(2025, 1, 11, 15, 0, tzinfo=dt.UTC).timestamp() * 1e9)
    assert atm_iv(book, 100.0, expired) == pytest.approx(0.90)  # the next expiry once the first closed
    book.iv[:] = np.nan
    assert atm_iv(book, 100.0, now) is None
