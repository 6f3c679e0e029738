"""The heatmap grid and its tiles, list in, list out: symbols and quotes in, positions and values out."""

from __future__ import annotations

import numpy as np
import pytest

from marketswarm.agents.calc.grid import Grid, Window, build_tiles, grid_step
from marketswarm.agents.calc.strategies import tile_values
from marketswarm.schemas.events import QuoteChange

EXP = "241115"


def sym(side: str, strike: int, root: str = "SPXW", exp: str = EXP) -> str:
    return f"{root}{exp}{side}{strike * 1000:08d}"


CALLS = [sym("C", k) for k in (5780, 5790, 5800, 5810, 5820)]
PUTS = [sym("P", k) for k in (5780, 5790, 5800, 5810, 5820)]


def quoted(grid: Grid, quotes: dict[str, tuple[float | None, float | None]]) -> Grid:
    for s, (bid, ask) in quotes.items():
        grid.apply(QuoteChange(sym=s, ts_ns=1, bid=bid, ask=ask))
    return grid


def test_positions_are_series_then_strikes_calls_before_puts() -> None:
    grid = Grid("e", [*PUTS[::-1], *CALLS], 5800.0, Window(expiries=5, range_pct=4.0, max_width_steps=2))
    assert grid.symbols == [*CALLS, *PUTS]
    assert [(s.expiry, s.side, s.start, s.step_x1000) for s in grid.series] == [
        ("2024-11-15", "call", 0, 10_000),
        ("2024-11-15", "put", 5, 10_000),
    ]


def test_the_window_keeps_the_nearest_expiries_and_strikes_near_spot() -> None:
    later = [sym("C", 5800, exp="241122"), sym("C", 5800, exp="241129")]
    far = sym("C", 7000)
    grid = Grid("e", [*CALLS, *later, far], 5800.0, Window(expiries=2, range_pct=1.0, max_width_steps=1))
    assert [s.expiry for s in grid.series] == ["2024-11-15", "2024-11-22"]
    assert far not in grid.pos and later[1] not in grid.pos


def test_a_pm_settled_root_gives_way_to_the_weekly_of_the_same_expiry() -> None:
    pm = [sym("C", k, root="SPX") for k in (5790, 5800, 5810)]
    grid = Grid("e", [*pm, *CALLS], 5800.0, Window())
    assert grid.symbols == CALLS


@pytest.mark.parametrize(("strikes", "step"), [([5780, 5790, 5800, 5825], 10_000), ([5800], 1000)])
def test_the_grid_step_is_the_most_common_spacing(strikes: list[int], step: int) -> None:
    assert grid_step(np.array([k * 1000 for k in strikes], dtype=np.int64)) == step


def test_tiles_are_the_formula_on_mids_and_absent_without_every_leg() -> None:
    grid = Grid("e", CALLS, 5800.0, Window(max_width_steps=2))
    quoted(grid, {CALLS[0]: (30.0, 31.0), CALLS[1]: (22.0, 23.0), CALLS[2]: (15.0, 16.0), CALLS[3]: (9.0, 10.0)})
    quoted(grid, {CALLS[4]: (6.0, 5.0)})  # crossed: no mid
    single = build_tiles(grid, "single")
    values, ok = tile_values(single, grid, slice(None))
    assert values.tolist()[:4] == [30.5, 22.5, 15.5, 9.5] and ok.tolist() == [True, True, True, True, False]

    fly = build_tiles(grid, "butterfly")
    keys = list(zip(fly.strike_x1000.tolist(), fly.width_x1000.tolist(), strict=True))
    assert keys == [(5_790_000, 10_000), (5_800_000, 10_000), (5_800_000, 20_000), (5_810_000, 10_000)]
    values, ok = tile_values(fly, grid, slice(None))
    assert values[:3].tolist() == [30.5 - 2 * 22.5 + 15.5, 22.5 - 2 * 15.5 + 9.5, 30.5 - 2 * 15.5 + 0.0]
    assert ok.tolist() == [True, True, False, False]  # the 5820 leg has no mid

    vertical = build_tiles(grid, "vertical")
    first = [
        i for i, (k, w) in enumerate(zip(vertical.strike_x1000, vertical.width_x1000, strict=True)) if k == 5_780_000
    ]
    values, ok = tile_values(vertical, grid, np.array(first))
    assert values.tolist() == [30.5 - 22.5, 30.5 - 15.5] and ok.all()  # calls: long k, short k + w


def test_a_put_vertical_sells_the_lower_strike() -> None:
    grid = quoted(Grid("e", PUTS, 5800.0, Window(max_width_steps=1)), {PUTS[2]: (20.0, 21.0), PUTS[1]: (15.0, 16.0)})
    vertical = build_tiles(grid, "vertical")
    i = int(np.flatnonzero(vertical.strike_x1000 == 5_800_000)[0])
    assert tile_values(vertical, grid, np.array([i]))[0].tolist() == [20.5 - 15.5]


def test_touching_lists_exactly_the_tiles_with_a_leg_at_a_position() -> None:
    grid = Grid("e", CALLS, 5800.0, Window(max_width_steps=2))
    fly = build_tiles(grid, "butterfly")
    p = grid.pos[CALLS[0]]
    expected = [t for t in range(len(fly)) if p in fly.legs[t].tolist()]
    assert fly.touching([p]).tolist() == expected
    assert fly.touching([]).tolist() == []
