"""Tiles are positions: the columnar wire forms, the publisher's column table and the JSON built from columns."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketswarm.agents.calc.gex import wants
from marketswarm.agents.calc.grid import Grid, Window, build_tiles, geometry
from marketswarm.agents.publish.tiles import ColumnTable
from marketswarm.schemas import codec
from marketswarm.schemas.documents import (
    diff_json,
    geometry_json,
    model_json,
    position_of,
    scores,
    snapshot_json,
    tile_json,
)
from marketswarm.schemas.events import ChangeBatch, GreeksChange, QuoteChange
from marketswarm.schemas.models import I64, Diff, Geometry, HeatmapModel, Staged, columns, pack
from marketswarm.topology import streams
from tests.rig.wire import as_redis, encode_changes

SYMS = [f"SPXW251124{s}{k * 1000:08d}" for s in "CP" for k in range(5800, 5830, 5)]


def fly() -> tuple[Grid, Geometry]:
    grid = Grid("e1", SYMS, 5815.0, Window(expiries=1, range_pct=10, max_width_steps=2))
    return grid, geometry("SPX", "butterfly", grid, build_tiles(grid, "butterfly"))


def tile_key(geometry: Geometry, pos: int) -> str:
    """The documented key of a tile (REST's ``k``), written out independently of the code that builds
    it: ``expiry|side|strike_x1000|width_x1000`` (GEX: ``s|strike_x1000``)."""
    strike = int(geometry.strikes_x1000()[pos])
    if geometry.strategy == "gex":
        return f"s|{strike:012d}"
    s = int(geometry.series_of()[pos])
    return f"{geometry.expiries[s]}|{geometry.sides[s][0]}|{strike}|{int(geometry.widths_x1000()[pos])}"


def test_tiles_are_positions_in_the_published_order() -> None:
    grid, g = fly()
    keys = [tile_key(g, p) for p in range(g.size)]

    def order(k: str) -> tuple[str, str, int, int]:
        e, s, k1, w = k.split("|")
        return e, s, int(k1), int(w)

    assert keys == sorted(keys, key=order), "REST's tile order is the position order"
    assert keys[0] == "2025-11-24|c|5805000|5000" and g.n_legs == 3
    for p, k in enumerate(keys):
        assert position_of(g, k) == p
    assert position_of(g, "2025-11-24|c|9999000|5000") is None and position_of(g, "garbage") is None
    legs = g.leg_positions()
    assert [g.contracts[x] for x in legs[0]] == ["SPXW251124C05800000", "SPXW251124C05805000", "SPXW251124C05810000"]


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_staged_and_diff_round_trip_through_the_codec(data: st.DataObject) -> None:
    _, g = fly()
    pos = np.array(sorted(data.draw(st.sets(st.integers(0, g.size - 1)))), dtype=np.int64)
    vals = np.array(data.draw(st.lists(st.floats(allow_nan=True), min_size=len(pos), max_size=len(pos))))
    cts = np.array(data.draw(st.lists(st.integers(0, 2**62), min_size=3, max_size=3)), dtype=np.int64)
    cols = columns(pos, vals, np.array([0, 2, 5]), cts)
    staged = Staged(
        strategy="butterfly", underlying="SPX", epoch="e1", src="1-0", rx_ns=1, ts_ns=2, slots=g.size, pending=0,
        reset=True, geometry=g, cols=cols, header=b'{"spot":1.0}',
    )  # fmt: skip
    back = codec.decode(streams.Payload.TILES, as_redis(codec.encode_staged(staged)))
    assert back == staged
    np.testing.assert_array_equal(back.cols.positions(), pos)
    np.testing.assert_array_equal(back.cols.values()[:, 0], vals)  # NaN == NaN here
    np.testing.assert_array_equal(back.cols.contract_times(), cts)
    diff = Diff(underlying="SPX", strategy="butterfly", version=3, prev_version=2, epoch="e1", asof_ns=5,
                reason="time", cols=cols, header=b"{}")  # fmt: skip
    assert codec.decode(streams.Payload.DIFF, as_redis(codec.encode_diff(diff))) == diff


def test_a_v1_entry_is_refused_with_a_clear_error() -> None:
    with pytest.raises(codec.DecodeError, match="unsupported version"):
        codec.decode(streams.Payload.TILES, {b"kind": b"tiles", b"v": b"1", b"data": b"{}"})


def test_column_table_publishes_what_a_reader_can_see() -> None:
    _, g = fly()
    t = ColumnTable("butterfly")
    t.reset(g)
    t.apply(columns(np.array([0, 1, 2]), np.array([1.0, 2.0, 3.0]), np.arange(6), np.full(6, 100)))
    assert t.pending_changes() == 6 and len(t) == 3  # a new tile changes presence and numbers
    first = t.publish(reset=True, header_changed=True)
    assert first is not None and first[1] == 3
    assert t.unchanged()
    # 0 vanishes, 1 moves, 2 gets the same value again, 3 appears.
    t.apply(columns(np.array([0, 1, 2, 3]), np.array([np.nan, 2.5, 3.0, 4.0])))
    assert t.pending_changes() == 2 + 3  # presence of 0 and 3; numbers of 1, 2, 3
    cols, n = t.publish(reset=False, header_changed=False) or (None, 0)
    assert cols is not None and n == 3
    assert cols.positions().tolist() == [0, 1, 3]
    assert np.isnan(cols.values()[0, 0]) and cols.values()[1:, 0].tolist() == [2.5, 4.0]
    # A leg quoted again at the same mid: the tile goes out (its legs' times moved), nothing else.
    leg = int(g.leg_positions()[1][0])
    t.apply(columns(np.array([1]), np.array([2.5]), np.array([leg]), np.array([200])))
    cols, n = t.publish(reset=False, header_changed=False) or (None, 0)
    assert cols is not None and cols.positions().tolist() == [1] and cols.contract_times().tolist() == [200]
    # Quote times alone: nothing a reader sees changed, no version; they go with the next one.
    t.apply(columns(np.zeros(0, np.int64), np.zeros(0), np.array([5]), np.array([300])))
    assert t.publish(reset=False, header_changed=False) is None
    cols, _ = t.publish(reset=False, header_changed=True) or (None, 0)
    assert cols is not None and cols.contract_positions().tolist() == [5]


def test_gex_rows_compare_bit_for_bit() -> None:
    g = Geometry(underlying="SPX", strategy="gex", epoch="e", strike=pack([5800000, 5805000], I64))
    t = ColumnTable("gex")
    t.reset(g)
    t.apply(columns(np.array([0]), np.array([[1.0, -1.0, 0.0]])))
    t.publish(reset=True, header_changed=False)
    t.apply(columns(np.array([0]), np.array([[1.0, -1.0, -0.0]])))  # -0.0 is written "-0.0"
    done = t.publish(reset=False, header_changed=False)
    assert done is not None and done[1] == 1


def test_model_json_is_the_documented_per_tile_json() -> None:
    grid, g = fly()
    vals = np.full((g.size, 4), np.nan)
    vals[0], vals[3, :2] = (1.25, 1.5, 1.2, 0.4123), (-0.05, 0.05)  # tile 3: no theo yet
    cts = np.arange(len(g.contracts), dtype=np.int64) * 1000 + 1_763_996_400_000_000_000
    header = b'{"underlying":"SPX","strategy":"butterfly","version":7}'
    model = orjson.loads(model_json("butterfly", g, vals, cts, header))
    assert model["version"] == 7 and len(model["tiles"]) == 2
    t0 = model["tiles"][0]
    legs = g.leg_positions()[0]
    assert t0 == {
        "k": "2025-11-24|c|5805000|5000",
        "expiry": "2025-11-24",
        "side": "call",
        "strike": 5805.0,
        "width": 5.0,
        "legs": [g.contracts[x] for x in legs],
        "value": 1.25,
        "score": round((5.0 - 1.25) / 1.25, 4),
        "natural": 1.5,
        "spread": 0.5,
        "theo": 1.2,
        "edge": -0.05,
        "pop": 0.4123,
        "legs_ts_ns": [int(cts[x]) for x in legs],
    }
    assert model["tiles"][1]["score"] is None  # a credit: no reward/risk
    assert model["tiles"][1]["theo"] is None and model["tiles"][1]["edge"] is None and model["tiles"][1]["pop"] is None
    HeatmapModel.model_validate({**model, "epoch": "e1", "asof": "x", "asof_ns": 0, "spot": None})
    assert tile_json(g, vals, cts, 1) is None and orjson.loads(tile_json(g, vals, cts, 3) or b"")["value"] == -0.05


def test_scores_round_half_to_even_like_the_dashboard() -> None:
    w = np.array([1000, 1000, 0])
    assert scores(np.array([0.5, -1.0, 2.0]), w).tolist()[0] == 1.0
    assert np.isnan(scores(np.array([0.5, -1.0, 2.0]), w)[1:]).all()


def test_sse_columns_carry_the_whole_model() -> None:
    _, g = fly()
    geo = orjson.loads(geometry_json(g))
    assert len(geo["strike"]) == len(geo["width"]) == len(geo["series_of"]) == g.size
    assert len(geo["legs"]) == g.size * 3 and geo["contracts"] == list(g.contracts)
    vals = np.full((g.size, 1), np.nan)
    vals[2, 0] = 0.5
    cts = np.zeros(len(g.contracts), dtype=np.int64)
    cts[4] = 900
    snap = orjson.loads(snapshot_json(g, vals, cts, b'{"version":3,"epoch":"e1","asof_ns":1000}'))
    assert snap["vals"][2] == 0.5 and snap["vals"][0] is None
    assert snap["cts_ago_ns"][4] == 100 and snap["cts_ago_ns"][0] is None
    diff = Diff(
        underlying="SPX", strategy="butterfly", version=4, prev_version=3, epoch="e1", asof_ns=1000, reason="time",
        cols=columns(np.array([2, 5, 6]), np.array([0.75, np.nan, 1.0]), np.array([1, 4]), np.array([990, 995])),
        header=b"{}",
    )  # fmt: skip
    d = orjson.loads(diff_json(diff))
    assert d["pos"] == [2, 3, 1] and d["vals"] == [0.75, None, 1.0]  # positions as gaps; null = gone
    assert d["cpos"] == [1, 3] and d["cts_ago_ns"] == [10, 5]


def test_an_update_may_carry_some_value_columns_and_readers_keep_the_others() -> None:
    """Theo and PoP move only at a theo refresh: an update between refreshes carries mid and natural
    debit alone (``which``), the calc to the publisher and the publisher to every reader."""
    cols = columns(np.array([1, 3]), np.array([[1.0, 1.2], [np.nan, np.nan]]), which=(0, 1), k=4)
    assert cols.changed == 2 and cols.carried().tolist() == [0, 1] and cols.values().shape == (2, 2)
    model = np.full((5, 4), 7.0)
    cols.scatter(model)
    assert (
        model[1].tolist() == [1.0, 1.2, 7.0, 7.0] and np.isnan(model[3]).all()  # absent: every column
    )
    table = ColumnTable("butterfly")
    g = fly()[1]
    table.reset(g)
    table.apply(columns(np.array([0, 1]), np.array([[1.0, 1.5, 1.1, 0.3], [2.0, 2.5, 2.1, 0.4]])))
    table.publish(reset=True, header_changed=True)
    table.apply(columns(np.array([1]), np.array([[2.05, 2.6]]), which=(0, 1), k=4))
    out = table.publish(reset=False, header_changed=False)
    assert out is not None and out[0].carried().tolist() == [0, 1] and out[0].values().tolist() == [[2.05, 2.6]]
    assert table.pub[1].tolist() == [2.05, 2.6, 2.1, 0.4]
    d = orjson.loads(diff_json(Diff(underlying="SPX", strategy="butterfly", version=2, prev_version=1, epoch="e1",
                                    asof_ns=1, reason="time", cols=out[0], header=b"{}")))  # fmt: skip
    assert d["k"] == 4 and d["cols"] == [0, 1] and d["vals"] == [2.05, 2.6]
    table.apply(columns(np.array([0]), np.array([[1.0, 1.5, 1.2, 0.35]])))  # a refresh: theo and PoP moved
    out = table.publish(reset=False, header_changed=False)
    assert out is not None and out[0].carried().tolist() == [0, 2, 3]  # the value, and what moved
    table.apply(columns(np.array([0, 1]), np.array([[1.1, 1.6, 1.3, 0.36], [2.1, 2.7, 2.2, 0.45]])))
    out = table.publish(reset=False, header_changed=False)
    assert out is not None and not out[0].which and out[0].values().shape == (2, 4)  # every column moved


def test_gex_skips_changes_without_chain_analytics_spot_or_epochs() -> None:
    def fields(*changes: object) -> dict[bytes, bytes]:
        batch = ChangeBatch(src="1-0", rx_ns=0, epoch="e", changes=changes)  # type: ignore[arg-type]
        return as_redis(encode_changes(batch))

    quote = QuoteChange(sym=SYMS[0], ts_ns=1, bid=1.0, ask=1.1)
    assert not wants(fields(quote, quote))
    assert wants(fields(quote, GreeksChange(sym=SYMS[0], ts_ns=1, gamma=0.01, oi=5)))
