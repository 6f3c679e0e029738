"""Best butterflies, list in, list out: a butterfly model and the dealer gravity in, the ranked list out."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

from marketswarm.agents.derive.flies import best_flies, nearest_expiries, tick
from marketswarm.schemas.models import I16, I32, I64, Geometry, pack

ASOF = int(dt.datetime(2025, 1, 9, 15, 0, tzinfo=dt.UTC).timestamp() * 1e9)
SERIES = [("2025-01-10", "call"), ("2025-01-10", "put"), ("2025-01-17", "call"), ("2025-01-24", "call"),
          ("2025-01-31", "call"), ("2025-01-08", "call")]  # fmt: skip
# (series, center, width, mid, natural, theo, pop): which pass the filter and why is in the test
TILES = [
    (0, 100, 10, 0.9, 1.0, 1.0, 0.3),  # 0: worth its price, reward/risk 9
    (0, 105, 10, 1.9, 2.0, 1.5, 0.4),  # 1: worth 0.75 of its price, reward/risk 4
    (0, 110, 10, 0.05, 0.10, 0.04, 0.01),  # 2: a debit of two ticks (0.10): kept
    (1, 100, 10, 0.05, 0.05, 0.05, 0.01),  # 3: a debit of one tick: out
    (1, 95, 10, np.nan, np.nan, np.nan, np.nan),  # 4: a leg without a bid or an ask: out
    (2, 100, 5, 1.0, 1.2, np.nan, np.nan),  # 5: no theo: out
    (4, 100, 10, 1.0, 1.0, 1.0, 0.3),  # 6: the fourth expiry: out
    (3, 120, 10, 0.9, 1.0, 1.0, 0.3),  # 7: tile 0's numbers, far from gravity
    (2, 100, 10, 9.9, 10.0, 9.0, 0.0),  # 8: a debit of the whole width: out
    (5, 100, 10, 1.0, 1.0, 1.0, 0.3),  # 9: an expired expiry: out
]


def geometry(tiles: list[tuple[Any, ...]] = TILES, underlying: str = "SPX") -> tuple[Geometry, np.ndarray]:
    contracts = tuple(f"C{i}" for i in range(3 * len(tiles)))
    g = Geometry(
        underlying=underlying, strategy="butterfly", epoch="e", n_legs=3,
        expiries=tuple(e for e, _ in SERIES), sides=tuple(s for _, s in SERIES), steps_x1000=(5000,) * len(SERIES),
        contracts=contracts, series=pack([t[0] for t in tiles], I16),
        strike=pack([t[1] * 1000 for t in tiles], I64), width=pack([t[2] * 1000 for t in tiles], I64),
        legs=pack(list(range(3 * len(tiles))), I32),
    )  # fmt: skip
    return g, np.array([t[3:] for t in tiles], float)


def test_the_three_nearest_live_expiries() -> None:
    g, _ = geometry()
    assert nearest_expiries(g, ASOF) == ["2025-01-10", "2025-01-17", "2025-01-24"]


def test_ranking_by_value_reward_gravity_and_width() -> None:
    g, vals = geometry()
    flies = best_flies(g, vals, ASOF, {"level": 100.0, "em": 20.0, "spot": 102.0})
    # composite = 0.4 min(theo / natural, 1) + 0.2 min(rr / 9, 1) + 0.25 / (1 + |K - level| / em)
    #           + 0.15 / (1 + |ln(width / (0.5 em))|); every width here is 10 = 0.5 em: that part is 0.15
    # tile 0: 0.4 + 0.2 + 0.25 + 0.15 = 1.0; tile 7: 0.4 + 0.2 + 0.25 / 2 + 0.15 = 0.875;
    # tile 1: 0.3 + 0.2 x 4 / 9 + 0.25 / 1.25 + 0.15 = 0.738889; tile 2: 0.4 x 0.4 + 0.2 + 0.25 / 1.5 + 0.15
    assert [(f["k"], f["composite"]) for f in flies] == [
        ("2025-01-10|c|100000|10000", 1.0),
        ("2025-01-24|c|120000|10000", 0.875),
        ("2025-01-10|c|105000|10000", 0.738889),
        ("2025-01-10|c|110000|10000", round(0.16 + 0.2 + 0.25 / 1.5 + 0.15, 6)),
    ]
    top = flies[1]
    assert (top["expiry"], top["side"], top["strike"], top["width"], top["debit"], top["mid"]) == (
        "2025-01-24", "call", 120.0, 10.0, 1.0, 0.9,
    )  # fmt: skip
    assert top["reward_risk"] == 9.0 and top["ev"] == 0.0 and top["edge"] == 0.1 and top["pop"] == 0.3
    assert top["spread"] == 0.2 and top["legs"] == ["C21", "C22", "C23"]
    assert top["parts"] == {
        "value": 1.0, "reward": 1.0, "gravity": 0.5, "width": 1.0, "gravity_distance_em": 1.0, "within_em": True,
        "suited_width": 10.0,
    }  # fmt: skip
    assert flies[2]["ev"] == -0.5 and flies[2]["parts"]["value"] == 0.75


def test_without_gravity_value_and_reward_count() -> None:
    g, vals = geometry()
    flies = best_flies(g, vals, ASOF, None)
    assert [f["composite"] for f in flies] == [0.6, 0.6, round(0.3 + 0.2 * 4 / 9, 6), 0.36]
    assert all(f["parts"]["gravity_distance_em"] is None and not f["parts"]["within_em"] for f in flies)


def test_the_volatility_regime_chooses_the_width() -> None:
    # 10 and 20 wide at the same center and numbers: the regime decides which suits the day.
    g, vals = geometry([(0, 100, 10, 1.0, 1.0, 1.0, 0.3), (0, 100, 20, 1.0, 1.0, 1.0, 0.3)])
    gravity = {"level": None, "em": 20.0, "spot": 2000.0}
    low = best_flies(g, vals, ASOF, gravity, regime="low")  # 0.3 % of 2000: 6 wide
    high = best_flies(g, vals, ASOF, gravity, regime="high")  # 1.2 %: 24 wide
    assert [f["width"] for f in low] == [10.0, 20.0] and [f["width"] for f in high] == [20.0, 10.0]
    assert low[0]["parts"]["suited_width"] == 6.0 and high[0]["parts"]["suited_width"] == 24.0
    assert high[0]["parts"]["width"] == round(1 / (1 + abs(np.log(20 / 24))), 6)
    unknown = best_flies(g, vals, ASOF, gravity)  # no regime yet: half the expected move, 10 wide
    assert [f["width"] for f in unknown] == [10.0, 20.0] and unknown[0]["parts"]["suited_width"] == 10.0


def test_the_minimum_debit_is_in_the_underlying_s_ticks() -> None:
    assert tick("SPX", np.array([0.5, 3.0])).tolist() == [0.05, 0.10]
    assert tick("SPY", np.array([0.5, 3.0])).tolist() == [0.01, 0.01]
    cheap = [(0, 100, 10, 0.03, 0.05, 0.05, 0.01), (0, 105, 10, 0.02, 0.02, 0.02, 0.01)]
    g, vals = geometry(cheap)
    assert best_flies(g, vals, ASOF, None) == []  # one tick of SPX, and less
    g, vals = geometry(cheap, "SPY")
    assert [f["strike"] for f in best_flies(g, vals, ASOF, None)] == [100, 105]  # five and two cents


def test_at_most_ten_and_none_without_candidates() -> None:
    many, vals = geometry([(0, 100 + 5 * i, 10, 1.0, 1.0, 1.0 - 0.01 * i, 0.3) for i in range(12)])
    flies = best_flies(many, vals, ASOF, None)
    assert len(flies) == 10 and [f["strike"] for f in flies] == [100 + 5 * i for i in range(10)]  # most worth first
    g, _ = geometry()
    assert best_flies(g, np.full((len(TILES), 4), np.nan), ASOF, None) == []


def test_ties_at_the_cut_go_to_the_heatmap_order() -> None:
    tied, vals = geometry([(0, 100 + 5 * i, 10, 1.0, 1.0, 1.0, 0.3) for i in range(12)])  # twelve identical
    flies = best_flies(tied, vals, ASOF, None)
    assert [f["strike"] for f in flies] == [100 + 5 * i for i in range(10)]
