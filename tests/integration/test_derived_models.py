"""The derived models end to end: a real chain and a capture of quotes and trades, replayed by the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from marketswarm.agents.sources.files import capture_line
from marketswarm.agents.sources.simulated import SimMarket
from marketswarm.schemas.codec import RawFrame
from marketswarm.schemas.levels import GexRows, gravity, structure
from marketswarm.schemas.models import BestFliesModel, GravityModel, IntentModel, MarketModeModel
from tests.integration.test_replay import SECOND, T0, replay

pytestmark = pytest.mark.integration

DERIVED = ("market_mode", "gravity", "intent", "best_flies")


def load(d: Path, name: str) -> dict[str, Any]:
    return orjson.loads((d / f"{name}.json").read_bytes())  # type: ignore[no-any-return]


def test_a_real_chain_replay_exports_every_derived_model_consistent_with_gex_and_butterfly(
    tmp_path: Path, real_data: Path
) -> None:
    replay([real_data / "cboe/spx_2024-01-07_1052ET.csv"], tmp_path / "out")
    d = tmp_path / "out" / "SPX"
    assert {p.stem for p in d.glob("*.json")} >= set(DERIVED)
    gex, fly = load(d, "gex"), load(d, "butterfly")
    mode = MarketModeModel.model_validate(load(d, "market_mode"))
    grav = GravityModel.model_validate(load(d, "gravity"))
    intent = IntentModel.model_validate(load(d, "intent"))
    best = BestFliesModel.model_validate(load(d, "best_flies"))
    for m in (mode, grav, intent, best):
        assert (m.underlying, m.asof_ns) == ("SPX", gex["asof_ns"])

    # Market mode: the GEX model's spot, flip and total, and what they make.
    assert (mode.spot, mode.flip, mode.total) == (gex["spot"], gex["flip"], gex["total"])
    assert mode.distance_pct == round(100 * (gex["spot"] - gex["flip"]) / gex["spot"], 4)
    assert mode.mode == (
        "transition" if abs(mode.distance_pct) <= 0.5 else "expansion" if gex["total"] < 0 else "compression"
    )

    # Gravity and the intent structure: the same formulas over gex.json's rows give the same documents.
    rows = gex["by_strike"]
    vals = np.array([[r["call"], r["put"], r["net"]] for r in rows])
    g = GexRows.of(gex, np.array([r["strike"] for r in rows]), vals)
    assert grav.model_dump() | {"strategy": "gravity"} == load(d, "gravity")
    assert {k: getattr(grav, k) for k in ("level", "band", "confidence", "em", "iv_atm", "spot")} == gravity(g)
    assert grav.iv_atm == gex["iv_atm"] and 0.01 < grav.iv_atm < 1.0
    spot = gex["spot"]
    below = [r for r in rows if r["strike"] <= spot and r["put"] < 0]
    above = [r for r in rows if r["strike"] >= spot and r["call"] > 0]
    assert grav.band[0] == min(below, key=lambda r: (r["put"], abs(r["strike"] - spot)))["strike"]
    assert grav.band[1] == max(above, key=lambda r: (r["call"], -abs(r["strike"] - spot)))["strike"]
    assert intent.structure is not None and intent.structure.model_dump() == structure(g)
    assert intent.spot == spot

    # Best butterflies: tiles of butterfly.json at their natural debit, every leg with a bid and an ask,
    # none at one tick (0.05) or less, ranked by the composite of the parts each one shows.
    tiles = {t["k"]: t for t in fly["tiles"]}
    quotes = chain_quotes(real_data / "cboe/spx_2024-01-07_1052ET.csv")
    assert 0 < len(best.flies) <= 10
    for f in best.flies:
        t = tiles[f.k]
        assert (f.expiry, f.side, f.strike, f.width, f.legs) == (
            t["expiry"],
            t["side"],
            t["strike"],
            t["width"],
            t["legs"],
        )
        assert all(quotes[leg][0] > 0 and quotes[leg][1] > 0 for leg in f.legs), f.k
        assert (f.debit, f.mid, f.theo, f.pop, f.spread) == (t["natural"], t["value"], t["theo"], t["pop"], t["spread"])
        assert f.debit > 0.05 + 1e-9 and f.debit < f.width
        assert f.ev == round(f.theo - f.debit, 6) and f.edge == t["edge"]
        assert f.reward_risk == round((f.width - f.debit) / f.debit, 4)
        p = f.parts
        assert f.composite == pytest.approx(
            0.4 * p.value + 0.2 * p.reward + 0.25 * p.gravity + 0.15 * p.width, abs=2e-6
        )
        assert p.value == pytest.approx(min(f.theo / f.debit, 1.0), abs=1e-6)
        assert f.expiry in best.expiries and f.expiry > "2024-01-07"  # the expired 2024-01-05 series is not offered
    assert [f.composite for f in best.flies] == sorted((f.composite for f in best.flies), reverse=True)
    assert (best.gravity.level, best.gravity.em) == (grav.level, grav.em)
    assert intent.flow.day.rows == []  # a chain file has no trades


def chain_quotes(path: Path) -> dict[str, tuple[float, float]]:
    """Bid and ask of every contract of a Cboe chain file, read here from its columns."""
    import csv

    out = {}
    for row in csv.reader(path.read_text().splitlines()[4:]):
        out[row[1]], out[row[12]] = (float(row[4]), float(row[5])), (float(row[15]), float(row[16]))
    return out


def flow_capture(path: Path) -> dict[tuple[float, str], dict[str, float]]:
    """A chain, then streamed quotes and trades on two of its contracts; returns the flow they make,
    worked out by hand: (strike, side) -> contracts and premium bought, sold, unclassified."""
    m = SimMarket("SPX", 3, 0, T0)
    frames = [(fmt, data) for fmt, data in m.advance(T0 + SECOND // 4) if fmt == "massive.rest.chain"]
    results = orjson.loads(frames[0][1])[0]["results"]
    ticker = {(r["details"]["strike_price"], r["details"]["contract_type"]): r["details"]["ticker"] for r in results}
    call, put = ticker[(5900.0, "call")], ticker[(5800.0, "put")]
    ms = T0 // 1_000_000
    seq = iter(range(1000, 2000))

    def q(sym: str, t: int, bp: float, ap: float) -> dict[str, Any]:
        return {"ev": "Q", "sym": sym, "bp": bp, "ap": ap, "bs": 1, "as": 1, "t": ms + t, "q": t}

    def tr(sym: str, t: int, p: float, s: int, c: tuple[int, ...] = (209,)) -> dict[str, Any]:
        return {"ev": "T", "sym": sym, "p": p, "s": s, "c": list(c), "t": ms + t, "q": next(seq), "x": 302}

    early = tr(call, -60_000, 9.0, 7)  # a minute before the chain's quotes: no quote in force
    ws = [
        [early],
        [q(call, 1000, 10.0, 10.4), q(put, 1000, 4.0, 4.2)],
        [tr(call, 2000, 10.4, 3), tr(call, 2000, 10.5, 2), tr(call, 2100, 10.0, 4)],  # at/through the ask, at the bid
        [tr(call, 2200, 10.3, 1), tr(call, 2300, 10.1, 6), tr(call, 2400, 10.2, 5)],  # nearer the ask, the bid, the mid
        [tr(call, 2500, 10.4, 50, (201,)), tr(call, 2500, 10.4, 60, (247,))],  # a cancellation, a compression: neither
        [tr(put, 3000, 4.2, 10, (233,)), tr(put, 3100, 4.0, 8)],  # a multi-leg print counts toward volume
        [q(put, 4000, 4.5, 4.9)],
        [tr(put, 5000, 4.5, 2)],  # against the newer quote: at its bid
    ]
    dup = tr(put, 5000, 4.5, 2)
    ws.append([{**dup, "q": ws[-1][0]["q"]}])  # the same fill again (provider redelivery): counted once
    ws.append([early])  # and the early one again
    with path.open("wb") as f:
        for fmt, data in frames:
            f.write(capture_line("SPX", RawFrame(src=fmt, rx_ns=T0, data=data)) + b"\n")
        for i, frame in enumerate(ws):
            f.write(
                capture_line("SPX", RawFrame(src="massive.ws", rx_ns=T0 + (i + 2) * SECOND, data=orjson.dumps(frame)))
                + b"\n"
            )
    return {
        (5900.0, "call"): {"bought": 3 + 2 + 1, "sold": 4 + 6, "unclassified": 5 + 7,
                           "bought_premium": 100 * (10.4 * 3 + 10.5 * 2 + 10.3),
                           "sold_premium": 100 * (10.0 * 4 + 10.1 * 6),
                           "unclassified_premium": 100 * (10.2 * 5 + 9.0 * 7)},
        (5800.0, "put"): {"bought": 10, "sold": 8 + 2, "unclassified": 0,
                          "bought_premium": 100 * 4.2 * 10, "sold_premium": 100 * (4.0 * 8 + 4.5 * 2),
                          "unclassified_premium": 0.0},
    }  # fmt: skip


def test_a_replayed_capture_of_quotes_and_trades_gives_the_exact_flow(tmp_path: Path) -> None:
    expected = flow_capture(tmp_path / "flow.jsonl")
    replay([tmp_path / "flow.jsonl"], tmp_path / "a")
    intent = IntentModel.model_validate(load(tmp_path / "a" / "SPX", "intent"))
    for window in (intent.flow.last_5m, intent.flow.last_30m, intent.flow.day):
        got = {(r.strike, r.side): r.model_dump(exclude={"strike", "side"}) for r in window.rows}
        assert set(got) == set(expected)
        for key, want in expected.items():
            for field, value in want.items():
                assert got[key][field] == pytest.approx(value, abs=1e-9), (key, field)
            assert got[key]["net_premium"] == pytest.approx(want["bought_premium"] - want["sold_premium"], abs=1e-9)
        assert window.totals.bought == 16 and window.totals.sold == 20 and window.totals.unclassified == 12
    assert intent.flow.date == "2025-11-24"
    replay([tmp_path / "flow.jsonl"], tmp_path / "b")
    for name in DERIVED:
        assert (tmp_path / "a" / "SPX" / f"{name}.json").read_bytes() == (
            tmp_path / "b" / "SPX" / f"{name}.json"
        ).read_bytes()


def test_the_volatility_index_reaches_every_model_that_uses_it(tmp_path: Path) -> None:
    """The simulated market's ``I:VIX`` values, replayed: every heatmap, GEX, market mode and best flies
    carry the newest one and its regime; theo is priced and best flies choose widths by that regime."""
    from marketswarm.schemas.levels import regime
    from tests.integration.test_replay import sim_capture

    cap = sim_capture(tmp_path / "sim.jsonl", seconds=6)
    last = None
    for line in cap.read_bytes().splitlines():
        data = orjson.loads(line).get("data", "")
        if "I:VIX" in data:
            last = [e for e in orjson.loads(data) if e.get("T") == "I:VIX"][-1]["val"]
    assert last is not None
    replay([cap], tmp_path / "out")
    d = tmp_path / "out" / "SPX"
    for name in ("single", "vertical", "butterfly", "gex", "market_mode", "best_flies"):
        doc = load(d, name)
        assert (doc["vix"], doc["regime"]) == (last, regime(last)), name
    fly = load(d, "butterfly")
    assert fly["theo_spot"] is not None and any(t["theo"] is not None for t in fly["tiles"])
    best = BestFliesModel.model_validate(load(d, "best_flies"))
    from marketswarm.agents.derive.flies import REGIME_WIDTH_PCT

    want = REGIME_WIDTH_PCT[best.regime] / 100 * best.spot if best.regime and best.spot else None
    assert all(f.parts.suited_width == pytest.approx(want, abs=1e-3) for f in best.flies)
    # As `make run` shows them: every leg two-sided (a single's tile exists only then), over one tick.
    quoted = {t["legs"][0] for t in load(d, "single")["tiles"]}
    assert best.flies and all(set(f.legs) <= quoted and f.debit > 0.05 + 1e-9 for f in best.flies)
