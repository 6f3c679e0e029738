"""``GET /api/risk/{underlying}``: the risk graph of any legs of the current grid (schemas/risk.py).

The legs' quotes are the single model's columns (its mid and natural give each contract's bid and ask,
as of the version served), their smiles the chain's IVs in the live state for the same contracts the
calcs fit them through (the heatmap window of the legs' expiries), and spot and time the single model's
header. The arithmetic runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response

from marketswarm.agents.gateway.state import gateway_of
from marketswarm.schemas import risk as rk
from marketswarm.schemas import smile as sm
from marketswarm.schemas.models import Geometry
from marketswarm.schemas.occ import SymbolError, parse_occ
from marketswarm.topology import streams

MAX_LEGS = 8
MAX_QTY = 1000
MAX_TIMES = 4

router = APIRouter()

LEGS = Query(..., description="comma-separated OCC symbols, each optionally ':<signed quantity>' (default 1), "
             "e.g. SPXW240109C04635000:1,SPXW240109C04650000:-2,SPXW240109C04665000:1")  # fmt: skip
PRICE = Query("natural", description="the entry price: natural (asks paid, bids taken), mid, or a debit in points")
BEFORE = Query("", description="comma-separated hours before the first expiry's close to draw P&L at")


def parse_legs(text: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        sym, _, qty = part.partition(":")
        try:
            n = int(qty) if qty else 1
            parse_occ(sym.strip().upper())
        except (ValueError, SymbolError) as exc:
            raise HTTPException(422, f"legs: {part[:40]!r} is not SYMBOL[:quantity]") from exc
        if n == 0 or abs(n) > MAX_QTY:
            raise HTTPException(422, f"legs: quantity of {sym[:30]!r} must be a non-zero integer within {MAX_QTY}")
        out.append((sym.strip().upper(), n))
    if not out or len(out) > MAX_LEGS or len({s for s, _ in out}) != len(out):
        raise HTTPException(422, f"legs: 1 to {MAX_LEGS} distinct contracts")
    return out


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        out = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise HTTPException(422, f"{name}: comma-separated numbers") from exc
    if len(out) > MAX_TIMES or not all(np.isfinite(out)):
        raise HTTPException(422, f"{name}: at most {MAX_TIMES} finite numbers")
    return out


def build(
    wanted: list[tuple[str, int]], g: Geometry, vals: np.ndarray, header: dict[str, Any], ivs: dict[str, float],
    price: str, before: tuple[float, ...],
) -> dict[str, Any]:  # fmt: skip
    """The risk document (raises ValueError with a message a person can act on)."""
    where = {c: i for i, c in enumerate(g.contracts)}
    series = g.series_of()
    strikes = g.strikes_x1000() / 1000
    smiles: dict[tuple[str, str], sm.Smile] = {}

    def smile_of(expiry: str, side: str) -> sm.Smile:
        if (expiry, side) not in smiles:
            cs = [c for c in g.contracts if (o := parse_occ(c)).expiry.isoformat() == expiry and o.side == side]
            fit = sm.Smile.fit(
                np.array([parse_occ(c).strike_x1000 / 1000 for c in cs]), np.array([ivs.get(c, np.nan) for c in cs])
            )
            if fit is None:
                raise ValueError(f"no implied volatility in the {expiry} {side}s yet")
            smiles[(expiry, side)] = fit
        return smiles[(expiry, side)]

    legs = []
    for sym, qty in wanted:
        p = where.get(sym)
        if p is None:
            raise ValueError(f"{sym} is not in the current grid (the heatmap's expiries and strike window)")
        o = parse_occ(sym)
        mid, nat = vals[p, 0], vals[p, 1]
        bid, ask = (None, None) if np.isnan(mid) else (round(2 * mid - nat, 6), float(nat))
        legs.append(
            rk.Leg(
                sym,
                qty,
                o.expiry.isoformat(),
                o.side == "call",
                o.strike_x1000 / 1000,
                bid,
                ask,
                smile_of(o.expiry.isoformat(), o.side),
            )
        )
    spot, asof = header.get("spot"), int(header.get("asof_ns") or 0)
    if spot is None:
        raise ValueError("no spot yet")
    first = min(leg.expiry for leg in legs)
    sides = {("call" if leg.is_call else "put") for leg in legs if leg.expiry == first}
    if len(sides) == 1:
        density = smile_of(first, sides.pop())
    else:  # out of the money: puts below spot, calls above
        calls, puts = smile_of(first, "call"), smile_of(first, "put")
        ks = np.concatenate([puts.strikes[puts.strikes < spot], calls.strikes[calls.strikes >= spot]])
        vs = np.concatenate([puts.ivs[puts.strikes < spot], calls.ivs[calls.strikes >= spot]])
        density = sm.Smile.fit(ks, vs) or calls
    debit = None if price == "natural" else rk.entry_prices(legs)["mid"] if price == "mid" else float(price)
    if price == "mid" and debit is None:
        raise ValueError("a leg has no two-sided quote: no mid")
    shown = strikes[np.isin(series, [i for i, e in enumerate(g.expiries) if e == first])]
    doc = rk.analyse(legs, float(spot), asof, density, debit=debit, before_hours=before, strikes=np.unique(shown))
    doc["legs"] = [
        {"symbol": leg.symbol, "qty": leg.qty, "expiry": leg.expiry, "side": "call" if leg.is_call else "put",
         "strike": leg.strike, "bid": leg.bid, "ask": leg.ask,
         "iv": round(float(leg.smile.at(np.array([leg.strike]))[0]), 6)}
        for leg in legs
    ]  # fmt: skip
    return doc


@router.get("/api/risk/{underlying}")
async def risk(
    request: Request, underlying: str, legs: str = LEGS, price: str = PRICE, before: str = BEFORE
) -> Response:
    """P&L at expiry and before it, breakevens, maximum profit and loss, probability of profit, expected
    P&L and expected move of any legs of the current grid (schemas/risk.py says how each is computed)."""
    gw = gateway_of(request)
    u = await gw.underlying(underlying)
    wanted = parse_legs(legs)
    if price not in ("natural", "mid"):
        _floats(price, "price")
    hours = _floats(before, "before")
    found = await gw.models.columns(gw.redis, u, streams.Strategy.SINGLE)
    if found is None:
        raise HTTPException(404, f"no published single model for {u} yet")
    g, vals, head = found
    header = orjson.loads(head)
    expiries = {parse_occ(s).expiry.isoformat() for s, _ in wanted}
    contracts = [c for c in g.contracts if parse_occ(c).expiry.isoformat() in expiries]
    raws = await gw.redis.hmget(streams.state_key(u, g.epoch), [f"{c}|g" for c in contracts]) if contracts else []
    ivs = {}
    for c, raw in zip(contracts, raws, strict=True):
        if raw:
            iv = orjson.loads(raw[streams.STATE_VALUE_HEADER :]).get("iv")
            if iv is not None:
                ivs[c] = float(iv)
    try:
        doc = await asyncio.to_thread(build, wanted, g, vals, header, ivs, price, hours)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    out = {"underlying": u, "epoch": g.epoch, "version": header.get("version"), **doc}
    return Response(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
