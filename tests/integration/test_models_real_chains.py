"""Real Cboe chains through the whole topology: every published tile and the GEX equal an independent
computation from the CSV, done here without the project's parsers or calculators."""

from __future__ import annotations

import csv
import math
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis
from scipy.stats import norm

from marketswarm.ops.inprocess import run_until_idle
from marketswarm.schemas.models import GexModel, HeatmapModel
from marketswarm.topology import streams
from marketswarm.topology.reading import read_model
from marketswarm.topology.settings import Settings

pytestmark = pytest.mark.integration

FILES = {"SPX": "spx_2024-01-07_1052ET.csv", "NDX": "ndx_2024-03-22_2140ET.csv"}
WEEKLY = {"SPXW", "NDXP"}


def read_chain(path: Path) -> dict[str, Any]:
    lines = path.read_text().splitlines()
    spot = float(lines[1].split("Last:")[1].split(",")[0])
    legs = []
    for row in csv.reader(lines[4:]):
        for sym, bid, ask, gamma, oi in (
            (row[1], row[4], row[5], row[9], row[10]),
            (row[12], row[15], row[16], row[20], row[21]),
        ):
            if sym:
                legs.append(
                    {
                        "sym": sym,
                        "root": sym[:-15],
                        "expiry": f"20{sym[-15:-13]}-{sym[-13:-11]}-{sym[-11:-9]}",
                        "side": "call" if sym[-9] == "C" else "put",
                        "k": int(sym[-8:]),
                        "bid": float(bid),
                        "ask": float(ask),
                        "gamma": float(gamma),
                        "oi": float(oi),
                    }  # fmt: skip
                )
    return {"spot": spot, "legs": legs}


def expected_tiles(chain: dict[str, Any], st: Settings) -> dict[str, dict[str, dict[str, Any]]]:
    spot = chain["spot"]
    expiries = sorted({leg["expiry"] for leg in chain["legs"]})[: st.heatmap_expiries]
    lo, hi = spot * (1 - st.heatmap_range_pct / 100) * 1000, spot * (1 + st.heatmap_range_pct / 100) * 1000
    out: dict[str, dict[str, dict[str, Any]]] = {"single": {}, "vertical": {}, "butterfly": {}}
    for e in expiries:
        roots = {leg["root"] for leg in chain["legs"] if leg["expiry"] == e}
        root = next((r for r in roots if r in WEEKLY), None) or sorted(roots)[0]
        for side in ("call", "put"):
            legs = {
                leg["k"]: leg
                for leg in chain["legs"]
                if leg["expiry"] == e and leg["root"] == root and leg["side"] == side and lo <= leg["k"] <= hi
            }
            ks = sorted(legs)
            step = statistics.mode(b - a for a, b in zip(ks, ks[1:], strict=False)) if len(ks) > 1 else 1000

            def mid(k: int, legs: dict[int, dict[str, Any]] = legs) -> float | None:
                leg = legs.get(k)
                if leg is None or not (leg["bid"] > 0 and leg["ask"] > 0 and leg["bid"] <= leg["ask"]):
                    return None
                return (leg["bid"] + leg["ask"]) / 2

            for k in ks:
                if (m := mid(k)) is not None:
                    out["single"][f"{e}|{side[0]}|{k}|0"] = {"value": m, "score": None}
                for w in (step * i for i in range(1, st.max_width_steps + 1)):
                    other = mid(k + w if side == "call" else k - w)
                    if m is not None and other is not None:
                        v = round(m - other, 6)  # published values are rounded to 1e-6
                        out["vertical"][f"{e}|{side[0]}|{k}|{w}"] = {
                            "value": v,
                            "score": (w / 1000 - v) / v if v > 0 else None,
                        }
                    a, c = mid(k - w), mid(k + w)
                    if a is not None and m is not None and c is not None:
                        v = round(a - 2 * m + c, 6)
                        out["butterfly"][f"{e}|{side[0]}|{k}|{w}"] = {
                            "value": v,
                            "score": (w / 1000 - v) / v if v > 0 else None,
                        }
    return out


async def load(r: aioredis.Redis, u: str, strategy: str) -> dict[str, Any]:
    body = await read_model(r, u, strategy)
    assert body is not None, f"no {strategy} model for {u}"
    return orjson.loads(body)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def published(redis_server: str, real_data: Path) -> dict[str, Any]:
    import asyncio

    from marketswarm.agents.sources.files import read_inputs, write_recorded

    shared = real_data / "cboe"
    st = Settings(underlyings=list(FILES), block_ms=50)

    async def go() -> dict[str, Any]:
        r = aioredis.Redis.from_url(redis_server)
        await r.flushall()
        await write_recorded(r, read_inputs([shared / f for f in FILES.values()]))
        await run_until_idle(redis_server, st, list(FILES), timeout_s=240)
        out = {u: {s: await load(r, u, s) for s in streams.STRATEGIES} for u in FILES}
        await r.aclose()
        return out

    return {"settings": st, "models": asyncio.run(go()), "shared": shared}


@pytest.mark.parametrize("u", list(FILES))
@pytest.mark.parametrize("strategy", ["single", "vertical", "butterfly"])
def test_every_tile_equals_the_formula_on_csv_mids(published: dict[str, Any], u: str, strategy: str) -> None:
    model = published["models"][u][strategy]
    HeatmapModel.model_validate(model)
    assert model["version"] == 1 and model["spot"] == pytest.approx(read_chain(published["shared"] / FILES[u])["spot"])
    expected = expected_tiles(read_chain(published["shared"] / FILES[u]), published["settings"])[strategy]
    got = {t["k"]: t for t in model["tiles"]}
    assert len(expected) > 100
    assert set(got) == set(expected), (len(set(got) - set(expected)), len(set(expected) - set(got)))
    for k, tile in got.items():
        assert tile["value"] == pytest.approx(expected[k]["value"], abs=1e-6), k
        if expected[k]["score"] is None:
            assert tile["score"] is None, k
        else:
            assert tile["score"] == pytest.approx(expected[k]["score"], rel=1e-3, abs=1e-3), k


def test_tiles_with_a_missing_leg_are_absent(published: dict[str, Any]) -> None:
    chain = read_chain(published["shared"] / FILES["SPX"])
    quoted = {leg["sym"] for leg in chain["legs"] if leg["bid"] > 0 and leg["ask"] > 0}
    flies = published["models"]["SPX"]["butterfly"]["tiles"]
    assert all(set(t["legs"]) <= quoted for t in flies)
    assert any(leg["bid"] == 0 for leg in chain["legs"])  # the file does have one-sided legs


@pytest.mark.parametrize("u", list(FILES))
def test_gex_equals_an_independent_computation(published: dict[str, Any], u: str) -> None:
    import datetime as dt
    from zoneinfo import ZoneInfo

    model = published["models"][u]["gex"]
    GexModel.model_validate(model)
    chain = read_chain(published["shared"] / FILES[u])
    s = chain["spot"]
    asof = dt.datetime.fromtimestamp(model["asof_ns"] / 1e9, ZoneInfo("America/New_York"))
    live = [
        leg
        for leg in chain["legs"]
        if dt.datetime.fromisoformat(leg["expiry"] + "T16:00").replace(tzinfo=asof.tzinfo) > asof
    ]
    calls: Counter[int] = Counter()
    puts: Counter[int] = Counter()
    for leg in live:
        g = leg["gamma"] * leg["oi"] * 100 * s * s * 0.01
        (calls if leg["side"] == "call" else puts)[leg["k"]] += g if leg["side"] == "call" else -g
    assert model["calls"] == pytest.approx(sum(calls.values()), rel=1e-9)
    assert model["puts"] == pytest.approx(sum(puts.values()), rel=1e-9)
    assert model["total"] == pytest.approx(sum(calls.values()) + sum(puts.values()), rel=1e-9, abs=1.0)
    rows = {round(r["strike"] * 1000): r for r in model["by_strike"]}
    assert set(rows) == set(calls) | set(puts)
    for k, r in rows.items():
        assert r["call"] == pytest.approx(calls[k], rel=1e-9, abs=0.01)
        assert r["put"] == pytest.approx(puts[k], rel=1e-9, abs=0.01)
    assert model["call_wall"] * 1000 == max(calls, key=lambda k: calls[k])
    assert model["put_wall"] * 1000 == min(puts, key=lambda k: puts[k])
    assert model["units"].startswith("USD per 1%") and "short puts" in model["convention"]
    # The flip lies between the two points of an independently priced profile where the sign changes.
    spots = s * np.linspace(0.9, 1.1, 81)
    net = np.zeros_like(spots)
    by_leg: dict[str, float] = {}
    ivs = {}
    for row in csv.reader((published["shared"] / FILES[u]).read_text().splitlines()[4:]):
        ivs[row[1]], ivs[row[12]] = float(row[7] or 0), float(row[18] or 0)
    for leg in live:
        iv = ivs[leg["sym"]]
        if iv <= 0 or leg["oi"] <= 0:
            continue
        close = dt.datetime.fromisoformat(leg["expiry"] + "T16:00").replace(tzinfo=asof.tzinfo)
        t = max((close - asof).total_seconds() / (365 * 86400), 60 / (365 * 86400))
        d1 = (np.log(spots / (leg["k"] / 1000)) + 0.5 * iv * iv * t) / (iv * math.sqrt(t))
        gamma = norm.pdf(d1) / (spots * iv * math.sqrt(t))
        net += (1 if leg["side"] == "call" else -1) * gamma * leg["oi"] * 100 * spots**2 * 0.01
        by_leg[leg["sym"]] = 1
    brackets = [(spots[i], spots[i + 1]) for i in range(80) if net[i] * net[i + 1] < 0 or net[i] == 0]
    if model["flip"] is None:
        assert not brackets
    else:
        assert any(a <= model["flip"] <= b for a, b in brackets), (model["flip"], brackets)
    expiries = defaultdict(float)
    for leg in live:
        expiries[leg["expiry"]] += (1 if leg["side"] == "call" else -1) * leg["gamma"] * leg["oi"] * 100 * s * s * 0.01
    assert {e["expiry"]: pytest.approx(e["net"], rel=1e-9, abs=0.01) for e in model["by_expiry"]} == dict(expiries)
    # Walls as traders read them: the largest call GEX at or above spot, the largest put GEX at or below.
    above = {k: v for k, v in calls.items() if k >= s * 1000 and v > 0}
    below = {k: v for k, v in puts.items() if k <= s * 1000 and v < 0}
    assert model["call_wall_above"] * 1000 == max(above, key=lambda k: above[k])
    assert model["put_wall_below"] * 1000 == min(below, key=lambda k: below[k])
    assert model["put_wall_below"] <= s <= model["call_wall_above"]
    # The profile drawn is the one the flip is found on: the independent one, point for point (to 0.2 %:
    # the independent pricing here reads the CSV's rounded IVs and skips what it cannot price).
    assert [p["spot"] for p in model["profile"]] == pytest.approx(spots, abs=0.006)
    got = np.array([p["net"] for p in model["profile"]])
    assert np.allclose(got, net, rtol=2e-3, atol=1.0), np.abs(got / net - 1).max()
    # Strike x expiry: net GEX of each (expiry, strike) of the nearest expiries within 5 % of spot.
    m = model["by_expiry_strike"]
    near = [leg for leg in live if abs(leg["k"] / 1000 / s - 1) <= 0.05]
    assert m["expiries"] == sorted({leg["expiry"] for leg in near})[:6]
    cell: defaultdict[tuple[str, int], float] = defaultdict(float)
    for leg in near:
        cell[(leg["expiry"], leg["k"])] += (
            (1 if leg["side"] == "call" else -1) * leg["gamma"] * leg["oi"] * 100 * s * s * 0.01
        )
    assert {round(k * 1000) for k in m["strikes"]} == {k for e, k in cell if e in m["expiries"]}
    for y, e in enumerate(m["expiries"]):
        for x, k in enumerate(m["strikes"]):
            assert m["net"][y][x] == pytest.approx(cell.get((e, round(k * 1000)), 0.0), rel=1e-9, abs=0.01)


def csv_ivs(path: Path) -> dict[str, float]:
    ivs = {}
    for row in csv.reader(path.read_text().splitlines()[4:]):
        ivs[row[1]], ivs[row[12]] = float(row[7] or 0), float(row[18] or 0)
    return ivs


def years(expiry: str, asof_ns: int) -> float:
    import datetime as dt
    from zoneinfo import ZoneInfo

    close = dt.datetime.fromisoformat(expiry + "T16:00").replace(tzinfo=ZoneInfo("America/New_York"))
    return max((close.timestamp() - asof_ns / 1e9) / (365 * 86400), 60 / (365 * 86400))


def bs_price(s: float, k: np.ndarray, t: float, iv: np.ndarray, call: bool) -> np.ndarray:
    d1 = (np.log(s / k) + 0.5 * iv * iv * t) / (iv * np.sqrt(t))
    d2 = d1 - iv * np.sqrt(t)
    return s * norm.cdf(d1) - k * norm.cdf(d2) if call else k * norm.cdf(-d2) - s * norm.cdf(-d1)


def test_a_single_s_theo_is_black_scholes_with_the_chain_s_iv(published: dict[str, Any]) -> None:
    model = published["models"]["SPX"]["single"]
    chain = read_chain(published["shared"] / FILES["SPX"])
    ivs, quotes = csv_ivs(published["shared"] / FILES["SPX"]), {leg["sym"]: leg for leg in chain["legs"]}
    s, asof = model["theo_spot"], model["theo_asof_ns"]
    assert s == pytest.approx(chain["spot"]) and asof == model["asof_ns"]
    checked = 0
    for tile in model["tiles"]:
        sym = tile["legs"][0]
        q = quotes[sym]
        assert tile["natural"] == q["ask"] and tile["spread"] == pytest.approx(q["ask"] - q["bid"], abs=1e-9)
        if ivs[sym] <= 0:
            continue
        want = bs_price(
            s, np.array([tile["strike"]]), years(tile["expiry"], asof), np.array([ivs[sym]]), tile["side"] == "call"
        )
        assert tile["theo"] == pytest.approx(float(want[0]), abs=0.005 + 1e-9), sym  # published to the cent
        assert tile["edge"] == pytest.approx(tile["theo"] - tile["value"], abs=1e-9)
        checked += 1
    assert checked > 200


def implied_pop(chain: dict[str, Any], ivs: dict[str, float], tile: dict[str, Any], s: float, asof: int) -> float:
    """P(lower < S_T < upper) for a fly bought at its natural debit, by integrating the density the
    series' smile implies: prices on a fine strike grid, their second differences (Breeden-Litzenberger),
    a trapezoid sum. The smile: a monotone cubic through the series' IVs in the heatmap window, flat beyond."""
    from scipy.interpolate import PchipInterpolator

    lo_k, hi_k = s * 0.96, s * 1.04
    side = tile["side"]
    root = tile["legs"][0][:-15]
    knots = sorted(
        (leg["k"] / 1000, ivs[leg["sym"]])
        for leg in chain["legs"]
        if leg["expiry"] == tile["expiry"] and leg["side"] == side and leg["root"] == root
        and lo_k <= leg["k"] / 1000 <= hi_k and ivs[leg["sym"]] > 0
    )  # fmt: skip
    ks, vs = np.array([k for k, _ in knots]), np.array([v for _, v in knots])
    smile = PchipInterpolator(ks, vs)
    t = years(tile["expiry"], asof)
    d, k, w = tile["natural"], tile["strike"], tile["width"]
    lower, upper = k - w + d, k + w - d
    h = 0.02
    x = np.arange(lower - 2 * h, upper + 2 * h + h / 2, h)
    price = bs_price(s, x, t, smile(np.clip(x, ks[0], ks[-1])), side == "call")
    density = np.diff(price, 2) / (h * h)  # at x[1:-1]
    inside = (x[1:-1] >= lower) & (x[1:-1] <= upper)
    return float(np.trapezoid(density[inside], x[1:-1][inside]))


def test_a_fly_s_probability_of_profit_is_the_implied_density_s(published: dict[str, Any]) -> None:
    model = published["models"]["SPX"]["butterfly"]
    chain = read_chain(published["shared"] / FILES["SPX"])
    ivs, quotes = csv_ivs(published["shared"] / FILES["SPX"]), {leg["sym"]: leg for leg in chain["legs"]}
    s, asof = model["theo_spot"], model["theo_asof_ns"]
    live = sorted({t["expiry"] for t in model["tiles"] if years(t["expiry"], asof) > 1e-4})
    tiles = [t for t in model["tiles"] if t["expiry"] in live[:2] and t["pop"] is not None and 0.05 < t["pop"] < 0.95]
    assert len(tiles) > 50
    for tile in tiles:  # natural debit: the wings' asks paid, the body's bids taken twice
        a, b, c = (quotes[sym] for sym in tile["legs"])
        assert tile["natural"] == pytest.approx(a["ask"] - 2 * b["bid"] + c["ask"], abs=1e-6)
    for tile in tiles[:: max(1, len(tiles) // 40)]:
        assert tile["pop"] == pytest.approx(implied_pop(chain, ivs, tile, s, asof), abs=0.005), tile["k"]
