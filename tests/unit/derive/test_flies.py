"""Best butterflies, list in, list out: a butterfly model and the dealer gravity in, the ranked list out."""

from __future__ import annotations

import datetime as dt

import numpy as np

from marketswarm.agents.derive.flies import best_flies, nearest_expiries
from marketswarm.schemas.models import I16, I32, I64, Geometry, pack

ASOF = int(dt.datetime(2025, 1, 9, 15, 0, tzinfo=dt.UTC).timestamp() * 1e9)
SERIES = [("2025-01-10", "call"), ("2025-01-10", "put"), ("2025-01-17", "call"), ("2025-01-24", "call"),
          ("2025-01-31", "call"), ("2025-01-08", "call")]  # fmt: skip
# (series, center, width, debit): which pass the filter and why is in the test
TILES = [
    (0, 100, 10, 0.5),  # 0: reward/risk 19
    (0, 105, 10, 1.0),  # 1: debit exactly 10 % of the width: kept, reward/risk 9
    (0, 110, 10, 1.5),  # 2: debit over 10 %: out
    (1, 100, 10, 0.0),  # 3: no debit: out
    (1, 95, 10, np.nan),  # 4: a leg without a mid: out
    (2, 100, 5, 0.05),  # 5: reward/risk 99
    (4, 100, 10, 0.1),  # 6: the fourth expiry: out
    (3, 120, 10, 0.5),  # 7: reward/risk 19, far from gravity
    (2, 100, 10, 0.5),  # 8: the same numbers as tile 0
    (5, 100, 10, 0.1),  # 9: an expired expiry: out
]


def geometry(tiles: list[tuple[int, int, int, float]] = TILES) -> tuple[Geometry, np.ndarray]:
    contracts = tuple(f"C{i}" for i in range(3 * len(tiles)))
    g = Geometry(
        underlying="SPX", strategy="butterfly", epoch="e", n_legs=3,
        expiries=tuple(e for e, _ in SERIES), sides=tuple(s for _, s in SERIES), steps_x1000=(5000,) * len(SERIES),
        contracts=contracts, series=pack([t[0] for t in tiles], I16),
        strike=pack([t[1] * 1000 for t in tiles], I64), width=pack([t[2] * 1000 for t in tiles], I64),
        legs=pack(list(range(3 * len(tiles))), I32),
    )  # fmt: skip
    return g, np.array([[t[3]] for t in tiles], float)


def test_the_three_nearest_live_expiries() -> None:
    g, _ = geometry()
    assert nearest_expiries(g, ASOF) == ["2025-01-10", "2025-01-17", "2025-01-24"]


def test_ranking_by_reward_gravity_and_the_expected_move() -> None:
    g, vals = geometry()
    flies = best_flies(g, vals, ASOF, {"level": 100.0, "em": 10.0, "spot": 102.0})
    # composite = 0.5 min(rr / 50, 1) + 0.3 / (1 + |K - level| / em) + 0.2 (|K - spot| <= em)
    # tile 5: 0.5 + 0.3 + 0.2 = 1.0; tiles 0 and 8: 0.19 + 0.3 + 0.2 = 0.69 (a tie: position order);
    # tile 1: 0.09 + 0.2 + 0.2 = 0.49; tile 7: 0.19 + 0.1 + 0 = 0.29
    assert [(f["k"], f["composite"]) for f in flies] == [
        ("2025-01-17|c|100000|5000", 1.0),
        ("2025-01-10|c|100000|10000", 0.69),
        ("2025-01-17|c|100000|10000", 0.69),
        ("2025-01-10|c|105000|10000", 0.49),
        ("2025-01-24|c|120000|10000", 0.29),
    ]
    top = flies[0]
    assert (top["expiry"], top["side"], top["strike"], top["width"], top["debit"]) == (
        "2025-01-17",
        "call",
        100.0,
        5.0,
        0.05,
    )
    assert top["reward_risk"] == 99.0 and top["legs"] == ["C15", "C16", "C17"]
    assert top["parts"] == {"reward": 1.0, "gravity_distance_em": 0.0, "within_em": True}
    assert flies[-1]["parts"] == {"reward": 0.38, "gravity_distance_em": 2.0, "within_em": False}


def test_without_gravity_only_reward_counts() -> None:
    g, vals = geometry()
    flies = best_flies(g, vals, ASOF, None)
    assert [f["composite"] for f in flies] == [0.5, 0.19, 0.19, 0.19, 0.09]
    assert all(f["parts"]["gravity_distance_em"] is None and not f["parts"]["within_em"] for f in flies)


def test_at_most_ten_and_none_without_candidates() -> None:
    many, vals = geometry([(0, 100 + 5 * i, 10, 0.2 + 0.01 * i) for i in range(12)])
    flies = best_flies(many, vals, ASOF, None)
    assert len(flies) == 10 and [f["strike"] for f in flies] == [100 + 5 * i for i in range(10)]  # cheapest first
    g, _ = geometry()
    assert best_flies(g, np.full((len(TILES), 1), np.nan), ASOF, None) == []


def test_ties_at_the_cut_go_to_the_heatmap_order() -> None:
    tied, vals = geometry([(0, 100 + 5 * i, 10, 0.2) for i in range(12)])  # twelve identical candidates
    flies = best_flies(tied, vals, ASOF, None)
    assert [f["strike"] for f in flies] == [100 + 5 * i for i in range(10)]
