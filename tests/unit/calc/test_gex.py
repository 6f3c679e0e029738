"""GEX, list in, list out: changes entries in, staged per-strike rows and totals out."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest

from marketswarm.agents.calc.gex import GexCalc
from marketswarm.schemas import codec
from marketswarm.schemas.events import ChangeBatch, EpochChange, GreeksChange, SpotChange
from marketswarm.schemas.models import Staged
from marketswarm.topology import streams
from marketswarm.topology.agent import Entry, Output
from marketswarm.topology.settings import ModelSettings
from tests.rig.wire import as_redis

NOW = int(dt.datetime(2024, 11, 14, 15, 0, tzinfo=dt.UTC).timestamp() * 1e9)
C5800, P5800, C5900 = "SPXW241115C05800000", "SPXW241115P05800000", "SPXW241115C05900000"
SPOT = 5850.0


def entry(i: int, *changes: object) -> Entry:
    return Entry(f"{i}-0", ChangeBatch(src=f"{i}-0", rx_ns=NOW, epoch="e1", changes=changes))  # type: ignore[arg-type]


def staged(outputs: list[Output]) -> list[Staged]:
    return [codec.decode(streams.Payload.TILES, as_redis(o.fields)) for o in outputs]


def calc() -> GexCalc:
    return GexCalc(ModelSettings(), "SPX")


def test_rows_are_signed_dollar_gamma_per_one_percent_move() -> None:
    g = calc()
    effects = g.process(
        [
            entry(1, EpochChange(epoch="e1", ts_ns=NOW, symbols=(C5800, P5800, C5900))),
            entry(2, GreeksChange(sym=C5800, ts_ns=NOW, gamma=0.002, oi=1000)),
            entry(3, GreeksChange(sym=P5800, ts_ns=NOW, gamma=0.001, oi=3000)),
            entry(4, SpotChange(ts_ns=NOW, value=SPOT)),
        ]
    )
    [out] = staged(effects.outputs)  # nothing before a spot; then the epoch's first update, with its geometry
    assert out.reset and out.geometry is not None and out.src == "4-0"
    unit = SPOT * SPOT * 0.01 * 100  # per unit of gamma × contract: $ per 1% move
    rows = dict(zip(out.geometry.strikes_x1000().tolist(), out.cols.values().tolist(), strict=True))
    call, put = 0.002 * 1000 * unit, -0.001 * 3000 * unit
    assert rows[5_800_000] == pytest.approx([call, put, call + put])
    assert 5_900_000 not in rows or rows[5_900_000] == pytest.approx([0.0, 0.0, 0.0])  # no greeks yet
    header = orjson.loads(out.header or b"{}")
    assert header["spot"] == SPOT and out.pending == 1  # one contract never had analytics


def test_analytics_of_a_contract_outside_the_book_change_nothing_and_later_ones_restage_only_their_row() -> None:
    g = calc()
    g.process(
        [entry(1, EpochChange(epoch="e1", ts_ns=NOW, symbols=(C5800,))), entry(2, SpotChange(ts_ns=NOW, value=SPOT))]
    )
    assert g.process([entry(3, GreeksChange(sym="SPXW241115C09999000", ts_ns=NOW, gamma=1.0, oi=1))]).outputs == []
    [out] = staged(g.process([entry(4, GreeksChange(sym=C5800, ts_ns=NOW + 1, gamma=0.001, oi=10))]).outputs)
    assert not out.reset and out.cols.positions().tolist() == [0]


def test_a_restore_from_the_checkpoint_the_commands_wrote_is_the_same_calc() -> None:
    g = calc()
    effects = g.process(
        [
            entry(1, EpochChange(epoch="e1", ts_ns=NOW, symbols=(C5800, P5800))),
            entry(2, GreeksChange(sym=C5800, ts_ns=NOW, gamma=0.002, oi=1000), SpotChange(ts_ns=NOW, value=SPOT)),
        ]
    )
    hset = next(c for c in effects.commands if c[0] == "HSET")
    checkpoint = {k.encode(): v for k, v in zip(hset[2::2], hset[3::2], strict=True)}
    again = calc()
    assert again.load([checkpoint]) == ()  # checkpointed with every commit: nothing to re-apply
    assert again.book is not None and again.book.symbols == g.book.symbols  # type: ignore[union-attr]
    assert again.vals.tobytes() == g.vals.tobytes() and again.spot == g.spot
